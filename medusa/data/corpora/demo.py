"""The synthetic demo corpus, written in the MSP-Podcast challenge layout.

What it is: espeak-ng speech (real synthesized audio, 16 kHz mono PCM16) of template sentences, spoken by
simulated speakers (espeak-ng voices of both genders, each with its own pitch, rate, loudness and channel
noise), with an intended emotion that shows in two channels, each imperfectly:

- prosody: pitch level and range, speaking rate, loudness and pauses drawn from per-emotion distributions
  that overlap (Angry/Happy/Surprise sound alike, so do Sad/Disgust/Contempt);
- wording: a sentence whose words lean to the emotion (or to a lexically close one) in part of the
  utterances, a neutral-worded sentence in the rest.

Some utterances blend two emotions. Simulated annotators (some careless) each give a primary emotion, optional
secondary emotions and arousal/valence/dominance ratings, as in `labels_detailed.csv`; the consensus file is
their plurality vote (X on a tie, O when Other wins). Class frequencies follow MSP-Podcast's imbalance, mildly
compressed so that every class keeps enough training utterances in a corpus this small.

Why: the licensed corpus cannot ship, and the pipeline's ideas (soft targets, class balancing, multimodal
fusion) only show on data that has the problems they address. Everything is seeded: the same params and pinned
package versions give byte-identical files, so `data.dvc` stays valid when a fresh clone rebuilds the corpus.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from medusa.config.params import DemoCorpusParams
from medusa.data.corpora.espeak import ESPEAK_RATE_HZ, SynthRequest, synthesize_batch
from medusa.labels import CODES, EMOTION_OF, OTHER, plurality, primary_code

SAMPLE_RATE = 16000
MIN_DURATION_S, MAX_DURATION_S = 1.5, 4.0

# ---------------------------------------------------------------------------------------------------------
# Class frequencies of the intended emotion (MSP-Podcast's order of frequency, imbalance compressed so that
# Fear/Disgust/Contempt still give >= 30 training utterances in ~1,000 Train rows).
PRIOR = {"N": 0.28, "H": 0.19, "A": 0.11, "S": 0.10, "U": 0.075, "C": 0.085, "D": 0.08, "F": 0.08}
#: Share of utterances that blend two emotions, and the range of the second emotion's weight.
BLEND_RATE, BLEND_WEIGHT = 0.4, (0.25, 0.5)
#: Share of utterances whose second "emotion" is none of the 8 (annotators then answer Other-...).
OTHER_RATE = 0.04
#: Emotions that a blend may pair with the main one (close in perception).
BLEND_PARTNERS = {"A": "DCU", "S": "FNC", "H": "UN", "U": "HFA", "F": "SU", "D": "AC", "C": "DAN", "N": "HSC"}
#: Lexically close emotions: a sentence of one of these is sometimes chosen instead of the emotion's own.
LEXICAL_NEIGHBOURS = {"A": "DC", "S": "F", "H": "U", "U": "HF", "F": "SU", "D": "AC", "C": "AD", "N": "ASHUFDC"}

# Prosody per emotion, relative to the speaker's own settings: pitch offset (espeak 0-100 scale), pitch
# range (0-100), rate (words per minute), volume (espeak 0-200), probability of a mid-sentence pause.
# Neighbouring classes overlap on purpose; PROSODY_SD adds the within-class spread.
PROSODY = {  # pitch, range, rate, volume, pause
    "A": (6, 78, 196, 150, 0.10),
    "S": (-9, 22, 138, 72, 0.55),
    "H": (9, 70, 188, 128, 0.12),
    "U": (15, 86, 172, 134, 0.35),
    "F": (12, 34, 206, 84, 0.30),
    "D": (-5, 52, 148, 104, 0.40),
    "C": (-8, 30, 152, 96, 0.42),
    "N": (0, 44, 168, 100, 0.22),
}
PROSODY_SD = (3.0, 7.0, 9.0, 10.0)
# Mean arousal, valence, dominance (1..7) an annotator gives to each emotion.
ATTRIBUTE_MEANS = {
    "A": (5.8, 2.2, 5.6), "S": (2.6, 2.4, 2.6), "H": (5.0, 5.9, 4.6), "U": (5.4, 4.8, 4.0),
    "F": (5.0, 2.5, 2.4), "D": (4.0, 2.4, 4.6), "C": (3.6, 2.9, 5.2), "N": (3.6, 4.1, 4.0),
}
SECONDARY_WORDS = {
    "A": ["Angry", "Frustrated", "Annoyed"], "S": ["Sad", "Disappointed", "Depressed"],
    "H": ["Happy", "Excited", "Amused"], "U": ["Surprise", "Surprised", "Confused"],
    "F": ["Fear", "Concerned", "Afraid"], "D": ["Disgust", "Disgusted"], "C": ["Contempt", "Disdain"],
    "N": ["Neutral", "Calm"],
}
OTHER_WORDS = ["Concerned", "Confused", "Amused", "Bored", "Curious", "Tired"]
# espeak-ng voice variants. Variants with `breath` or `echo` settings (f2-f5, m2, Alicia, ...) are left out: their
# output depends on state that differs from run to run, which would break the byte-identical rebuild.
MALE_VOICES = ["m1", "m3", "m4", "m5", "m6", "m7", "m8", "john", "paul", "david", "edward"]
FEMALE_VOICES = ["f1", "anika", "belinda", "linda", "steph", "steph2", "steph3", "Annie", "Andrea", "aunty"]

# ---------------------------------------------------------------------------------------------------------
# Wording. Slots keep the vocabulary shared across classes, so only the emotional words carry the label.
SUBJECTS = ["my brother", "the manager", "our neighbor", "my sister", "the new guy", "your friend", "the team",
            "my boss", "the landlord", "that teacher", "my cousin", "the doctor"]
THINGS = ["the meeting", "this project", "the new schedule", "that phone call", "the test results",
          "the trip", "the report", "this whole thing", "the weekend plan", "the last episode", "the budget",
          "the old car"]
TIMES = ["today", "this morning", "last night", "on Monday", "again", "this week", "yesterday", "at lunch"]
EMOTIONAL_TEMPLATES = {
    "A": ["I am so sick of {thing}", "{subj} never listens to a word I say",
          "stop wasting my time with {thing}", "this is completely unacceptable {time}",
          "I told {subj} a hundred times", "{thing} makes me absolutely furious",
          "how dare {subj} do that {time}", "I am done with {subj} {time}"],
    "S": ["I really miss the way things were", "{thing} just broke my heart",
          "nobody called me {time}", "I feel so alone since {subj} left",
          "everything about {thing} feels hopeless", "I cried about {thing} {time}",
          "I lost my best friend {time}", "{subj} is gone and I miss them"],
    "H": ["I love {thing} so much", "{thing} went wonderfully {time}", "that was the best day ever",
          "{subj} made me so happy {time}", "we had a great time with {subj}",
          "I am thrilled about {thing}", "this is fantastic news for us", "{subj} got the job, I'm delighted"],
    "U": ["wait, {subj} did what {time}", "I can't believe {thing} actually happened",
          "no way, are you serious right now", "wow, I never expected {thing}",
          "{subj} showed up out of nowhere {time}", "really, {thing} is already done",
          "oh my, what a surprise {time}", "hold on, is that {subj}"],
    "F": ["I am scared of what {subj} might do", "something is wrong with {thing}",
          "please don't leave me alone {time}", "I heard a strange noise {time}",
          "what if {thing} goes terribly wrong", "I'm afraid {subj} is in danger",
          "my hands are shaking {time}", "I think someone is following me"],
    "D": ["that smell in the kitchen is disgusting", "{thing} was absolutely revolting",
          "ugh, {subj} left garbage everywhere {time}", "the food {time} made me sick",
          "I can't stand how filthy {thing} is", "that is just gross, honestly",
          "{subj} chews with the mouth open, yuck", "the bathroom was nasty {time}"],
    "C": ["{subj} thinks they are so clever", "whatever, {thing} is beneath me",
          "oh please, as if {subj} knows anything", "typical, {subj} failed again {time}",
          "I expected nothing better from {subj}", "how pathetic, {thing} again",
          "{subj} is such an amateur", "spare me the lecture about {thing}"],
}
NEUTRAL_TEMPLATES = [
    "{subj} went to the store {time}", "the meeting starts at nine {time}", "I need to send {thing} {time}",
    "we talked about {thing} {time}", "{subj} will call you back later", "the bus leaves from the main station",
    "I put {thing} on the table", "{subj} is working from home {time}", "let me check {thing} first",
    "the forecast says it will rain {time}", "{subj} moved to a new office", "we looked at {thing} {time}",
    "I will read {thing} after lunch", "{subj} asked about {thing}", "the train was on time {time}",
    "there is a copy of {thing} upstairs", "{subj} parked near the library", "I wrote down {thing} {time}",
]


@dataclass
class Speaker:
    speaker_id: int
    gender: str          # "Male" / "Female"
    voice: str           # espeak-ng voice, e.g. "en+m3"
    pitch: float         # base pitch, espeak 0-100
    rate_factor: float
    gain: float          # linear gain applied after synthesis
    snr_db: float        # channel noise of the speaker's recordings
    split_set: str       # "Train", "Development" or "blind"


@dataclass
class Utterance:
    file_name: str
    speaker: Speaker
    emotion: str                  # intended main emotion (code)
    blend: str | None             # second emotion, if any
    blend_weight: float           # share of the second emotion
    text: str                     # reference transcript
    request: SynthRequest
    votes: list[tuple[str, str, list[str], tuple[int, int, int]]] = field(default_factory=list)
    # (worker id, primary word, secondary words, (A, V, D))


def _fill(template: str, rng: np.random.Generator) -> str:
    return template.format(subj=rng.choice(SUBJECTS), thing=rng.choice(THINGS), time=rng.choice(TIMES))


def _wording(emotion: str, blend: str | None, blend_weight: float, rng: np.random.Generator) -> str:
    """Pick a sentence: the emotion's own words (~45 %), a lexical neighbour's (~10 %), else neutral words."""
    source = blend if blend not in (None, OTHER) and rng.random() < blend_weight else emotion
    u = rng.random()
    if source == "N":
        lexical = str(rng.choice(list(LEXICAL_NEIGHBOURS["N"]))) if u < 0.12 else None
    elif u < 0.45:
        lexical = source
    elif u < 0.55:
        lexical = str(rng.choice(list(LEXICAL_NEIGHBOURS[source])))
    else:
        lexical = None
    templates = EMOTIONAL_TEMPLATES[lexical] if lexical else NEUTRAL_TEMPLATES
    return _fill(str(rng.choice(templates)), rng)


def _prosody(speaker: Speaker, emotion: str, blend: str | None, w: float, text: str,
             rng: np.random.Generator) -> SynthRequest:
    mean = np.asarray(PROSODY[emotion], dtype=float)
    if blend in PROSODY:
        mean = (1 - w) * mean + w * np.asarray(PROSODY[blend], dtype=float)
    pitch, prange, rate, volume = mean[:4] + rng.normal(0.0, PROSODY_SD)
    words = text.split()
    if len(words) > 3 and rng.random() < mean[4]:  # a hesitation pause at a word boundary
        cut = int(rng.integers(1, len(words) - 1))
        pause_ms = int(rng.integers(150, 550))
        words = words[:cut] + [f'<break time="{pause_ms}ms"/>'] + words[cut:]
    return SynthRequest(
        text=" ".join(words), voice=speaker.voice,
        rate_wpm=int(np.clip(rate * speaker.rate_factor, 95, 300)),
        volume=int(np.clip(volume, 30, 200)),
        pitch=int(np.clip(speaker.pitch + pitch, 5, 99)),
        pitch_range=int(np.clip(prange, 0, 100)),
        word_gap=int(rng.integers(0, 3)),
    )


def _annotate(utt: Utterance, n_annotators: int, workers: list[tuple[str, float, float]],
              rng: np.random.Generator) -> None:
    """Simulated annotators: a careful one votes from the utterance's emotion mix, a careless one often
    falls back to Neutral, a perceptually close class or Other. Ratings follow the voted mix with noise."""
    chosen = rng.choice(len(workers), size=n_annotators, replace=False)
    mix = {utt.emotion: 1.0 - utt.blend_weight}
    if utt.blend is not None:
        mix[utt.blend] = mix.get(utt.blend, 0.0) + utt.blend_weight
    codes, probs = list(mix), np.asarray(list(mix.values()))
    for k in sorted(chosen):
        worker, reliability, bias = workers[k]
        if rng.random() < reliability:
            vote = str(rng.choice(codes, p=probs / probs.sum()))
        else:
            u = rng.random()
            vote = "N" if u < 0.40 else OTHER if u < 0.52 else str(rng.choice(list(BLEND_PARTNERS[utt.emotion])))
        primary = f"Other-{rng.choice(OTHER_WORDS)}" if vote == OTHER else EMOTION_OF[vote]
        secondary: list[str] = []
        if utt.blend in SECONDARY_WORDS and rng.random() < 0.5:
            secondary.append(str(rng.choice(SECONDARY_WORDS[utt.blend])))
        if rng.random() < 0.3:
            secondary.append(str(rng.choice(SECONDARY_WORDS[str(rng.choice(list(BLEND_PARTNERS[utt.emotion])))])))
        secondary = [s for s in dict.fromkeys(secondary) if s != primary]
        rated = utt.emotion if vote in (OTHER, "N") and utt.emotion != "N" and rng.random() < 0.5 else vote
        avd_mean = np.asarray(ATTRIBUTE_MEANS.get(rated, ATTRIBUTE_MEANS["N"]))
        avd = np.clip(np.rint(avd_mean + bias + rng.normal(0, 0.8, 3)), 1, 7).astype(int)
        utt.votes.append((worker, primary, secondary, (int(avd[0]), int(avd[1]), int(avd[2]))))


def _speakers(p: DemoCorpusParams, rng: np.random.Generator) -> list[Speaker]:
    n = p.n_speakers
    n_blind = max(2, round(0.1 * n)) if p.n_blind else 0
    n_dev = max(2, round(0.2 * n))
    sets = ["Train"] * (n - n_dev - n_blind) + ["Development"] * n_dev + ["blind"] * n_blind
    speakers = []
    for i, split_set in enumerate(sets):
        male = i % 2 == 0
        voices = MALE_VOICES if male else FEMALE_VOICES
        speakers.append(Speaker(
            speaker_id=101 + i, gender="Male" if male else "Female",
            voice="en+" + voices[(i // 2) % len(voices)],
            pitch=float(rng.uniform(34, 46) if male else rng.uniform(56, 68)),
            rate_factor=float(rng.uniform(0.93, 1.07)), gain=float(rng.uniform(0.8, 1.25)),
            snr_db=float(rng.uniform(15, 35)), split_set=split_set,
        ))
    return speakers


def plan_corpus(p: DemoCorpusParams) -> list[Utterance]:
    """Draw every utterance (speaker, emotion, words, prosody, votes) from the seed; no audio yet."""
    if p.annotators_max < p.annotators_min:
        raise ValueError(f"demo_corpus.annotators_max ({p.annotators_max}) < annotators_min ({p.annotators_min})")
    rng = np.random.default_rng(p.seed)
    speakers = _speakers(p, rng)
    workers = []
    for k in range(60):
        careless = k % 3 == 0
        workers.append((f"WORKER{k + 1:05d}", float(rng.uniform(0.35, 0.6) if careless else rng.uniform(0.75, 0.95)),
                        float(rng.normal(0, 0.4))))
    classes = list(PRIOR)
    prior = np.asarray([PRIOR[c] for c in classes])
    prior = prior / prior.sum()
    utterances: list[Utterance] = []
    for split_set, count in (("Train", p.n_train), ("Development", p.n_development), ("blind", p.n_blind)):
        group = [s for s in speakers if s.split_set == split_set]
        # Podcasts are uneven: some speakers talk much more than others.
        share = rng.lognormal(0.0, 0.5, len(group))
        per_speaker = np.floor(count * share / share.sum()).astype(int)
        per_speaker[: count - per_speaker.sum()] += 1
        for speaker, n_utt in zip(group, per_speaker):
            for _ in range(n_utt):
                emotion = str(rng.choice(classes, p=prior))
                blend, w = None, 0.0
                u = rng.random()
                if u < OTHER_RATE:
                    blend, w = OTHER, float(rng.uniform(0.5, 0.8))
                elif u < OTHER_RATE + BLEND_RATE:
                    blend = str(rng.choice(list(BLEND_PARTNERS[emotion])))
                    w = float(rng.uniform(*BLEND_WEIGHT))
                text = _wording(emotion, blend, w, rng)
                request = _prosody(speaker, emotion, blend, w, text, rng)
                utterances.append(Utterance("", speaker, emotion, blend, w, text, request))
    # File names: podcast-like ids for labelled audio, Test3-like names for the blind set.
    counters: dict[int, int] = {}
    blind_index = 0
    for utt in utterances:
        if utt.speaker.split_set == "blind":
            blind_index += 1
            utt.file_name = f"MSP-PODCAST_test3_{blind_index:04d}.wav"
        else:
            counters[utt.speaker.speaker_id] = counters.get(utt.speaker.speaker_id, 0) + 1
            utt.file_name = f"MSP-PODCAST_{utt.speaker.speaker_id:04d}_{counters[utt.speaker.speaker_id]:04d}.wav"
            _annotate(utt, int(rng.integers(p.annotators_min, p.annotators_max + 1)), workers, rng)
    return utterances


def _finish_audio(raw: np.ndarray, utt: Utterance, seed: int, index: int) -> np.ndarray:
    """22.05 kHz int16 speech -> 16 kHz int16 clip with leading/trailing silence and channel noise."""
    rng = np.random.default_rng([seed, index])  # per-utterance stream: independent of processing order
    x = resample_poly(raw.astype(np.float64) / 32768.0, SAMPLE_RATE, ESPEAK_RATE_HZ) * utt.speaker.gain
    lead = np.zeros(int(rng.uniform(0.08, 0.3) * SAMPLE_RATE))
    # At least 0.1 s of trailing silence, more if the clip would be shorter than MIN_DURATION_S.
    tail = np.zeros(max(int(0.1 * SAMPLE_RATE), int(MIN_DURATION_S * SAMPLE_RATE) - len(lead) - len(x)))
    x = np.concatenate([lead, x, tail])
    speech_rms = np.sqrt(np.mean(np.square(x[x != 0]))) if np.any(x) else 1e-3
    noise = rng.normal(0.0, speech_rms * 10 ** (-utt.speaker.snr_db / 20), len(x))
    return np.clip(np.rint((x + noise) * 32767.0), -32768, 32767).astype(np.int16)


def _wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _synthesize(utterances: list[Utterance], chunk: int = 200) -> list[np.ndarray]:
    """Synthesize in fixed chunks, each in a fresh process (see medusa.data.corpora.espeak), in order."""
    out: list[np.ndarray] = []
    with tqdm(total=len(utterances), desc="synthesizing speech", unit="utt") as bar:
        for start in range(0, len(utterances), chunk):
            part = utterances[start:start + chunk]
            out.extend(synthesize_batch([u.request for u in part]))
            bar.update(len(part))
    return out


def _shorten(utt: Utterance, duration_s: float) -> None:
    """An utterance over MAX_DURATION_S is re-spoken faster and without its pause."""
    r = utt.request
    text = " ".join(w for w in r.text.split() if not w.startswith("<break") and not w.startswith("time="))
    factor = duration_s / (MAX_DURATION_S - 0.6)
    utt.request = SynthRequest(text, r.voice, int(min(400, r.rate_wpm * factor)), r.volume, r.pitch,
                               r.pitch_range, 0)


def build_demo_corpus(out_dir: str | Path, params: DemoCorpusParams) -> dict[str, int]:
    """Write the corpus to out_dir (replacing it atomically); returns counts per Split_Set."""
    out_dir = Path(out_dir)
    utterances = plan_corpus(params)
    audio = _synthesize(utterances)
    pad = int(0.5 * SAMPLE_RATE)  # the silence and lead added in _finish_audio, at most
    too_long = [i for i, a in enumerate(audio)
                if len(a) * SAMPLE_RATE / ESPEAK_RATE_HZ + pad > MAX_DURATION_S * SAMPLE_RATE]
    for i in too_long:
        _shorten(utterances[i], len(audio[i]) / ESPEAK_RATE_HZ + 0.5)
    for i, a in zip(too_long, _synthesize([utterances[i] for i in too_long])):
        audio[i] = a

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("Audios", "Labels", "Transcripts"):
        (tmp / sub).mkdir(parents=True)
    for i, (utt, raw) in enumerate(tqdm(list(zip(utterances, audio)), desc="writing wav files", unit="utt")):
        (tmp / "Audios" / utt.file_name).write_bytes(_wav_bytes(_finish_audio(raw, utt, params.seed, i)))
        if utt.speaker.split_set != "blind":
            (tmp / "Transcripts" / (Path(utt.file_name).stem + ".txt")).write_text(utt.text + "\n")
    labelled = sorted((u for u in utterances if u.speaker.split_set != "blind"), key=lambda u: u.file_name)
    _write_labels(tmp / "Labels", labelled)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    counts: dict[str, int] = {}
    for u in utterances:
        counts[u.speaker.split_set] = counts.get(u.speaker.split_set, 0) + 1
    return counts


def _write_labels(label_dir: Path, labelled: list[Utterance]) -> None:
    with (label_dir / "labels_detailed.csv").open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(["FileName", "EmoDetail"])
        for u in labelled:
            for worker, primary, secondary, (a, v, d) in u.votes:
                w.writerow([u.file_name, f"{worker}; {primary}; {','.join(secondary)}; "
                                         f"A:{a:.1f}; V:{v:.1f}; D:{d:.1f};"])
    with (label_dir / "labels_consensus.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for u in labelled:
            consensus = plurality([primary_code(v[1]) for v in u.votes])
            avd = np.mean([v[3] for v in u.votes], axis=0)
            w.writerow([u.file_name, consensus, f"{avd[0]:.4f}", f"{avd[1]:.4f}", f"{avd[2]:.4f}",
                        u.speaker.speaker_id, u.speaker.gender, u.speaker.split_set])


def tree_digest(root: str | Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order (compare two builds)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


assert set(PRIOR) == set(CODES) == set(PROSODY) == set(ATTRIBUTE_MEANS)
