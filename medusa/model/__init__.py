"""DeepSER (stages 1-2), its data pipeline and training, ensemble members, the linear probe."""
