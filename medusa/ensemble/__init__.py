"""MEDUSA's ensemble level: voting baselines, the meta-classifier (stage 3) and its model soup (stage 4).

Protocol (no leakage): the DeepSER members train on `train` and pick their epoch on `dev`; the meta-classifier
trains on the members' posteriors of `dev` (utterances no member trained on); every reported figure is on
`test`, which neither level saw. (The members' epochs were chosen on dev, so dev posteriors are slightly more
confident than unseen ones; training the meta level on them is the paper's setting, and test stays clean.)

Meta-classifier input: the concatenated class posteriors of the chosen members, in member order (M x C
values, C = the run's classes: the manifest's p_ columns, which every member's posteriors share), as in the
paper ("a meta-classifier learns to combine the posterior distributions of individual classifiers");
`attributes_in` also feeds their attribute predictions (M x 3 more; off in both presets), and
`include_probes` (beyond the paper) the posteriors of each member's linear probe (M x C more, read from the
member's probe_posteriors.parquet; medusa.model.linear_probe), so that MEDUSA can fall back on its best probe. The blocks
follow each other in that order (INPUT_BLOCKS), each one member after member; the predict bundle stacks new audio
through the same `meta_inputs`. Output:
C class logits and, when mse_weight > 0 (`attributes_out`), 3 attributes; loss = ce_weight * soft-target CE +
mse_weight * attribute MSE (the paper's eq. (1)). The two attribute switches are independent. Each epoch draws a
class-balanced subset of dev (stage 2's sampling, uniform class weights); AdamW; no MixUp. A fixed number of
epochs, as no split is left for selection. The soup averages the weights of `seeds` runs; with a hidden layer
they all start from the first seed's initial weights and differ by their draws only (meta.soup_runs).

Scores: balanced macro-F1 on test over the run's classes with its 95 % class-stratified bootstrap interval (the
headline), plain macro-F1 and accuracy beside it (medusa.scoring.metrics); the same resamples for every technique.
Table 3 also carries, whatever `include_probes` says, the soup trained with the other setting of that switch
(same seeds) and the best probe by dev, so that the switch is measured on every run.
"""
