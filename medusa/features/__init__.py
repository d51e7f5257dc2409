"""Speech and text encoders, Whisper ASR, and the feature stores they fill."""
