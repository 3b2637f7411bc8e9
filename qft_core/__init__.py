"""qft core library: data, model, training, evaluation and packaging without Dagster."""
