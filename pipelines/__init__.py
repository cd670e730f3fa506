"""The catsdogs DAGs (local through kfp.local, Vertex AI Pipelines) and the `catsdogs` command."""
