"""MEDUSA stages 3-4: voting, the meta-classifier and its soup, the ensemble tables."""
