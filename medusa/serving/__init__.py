"""A trained ensemble as a bundle: its format, prediction on new audio, the challenge submission, evaluation."""
