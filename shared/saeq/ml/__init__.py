"""The torch core: the SAE model and its files, hook points, models, corpus, activations, features, labelling. No Redis, Celery, HTTP or object store."""
