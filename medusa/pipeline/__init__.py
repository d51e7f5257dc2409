"""Running the stages: the notebook runner, the paper dry run, stand-in encoders."""
