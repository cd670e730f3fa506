"""Stage 5: publish a trained model as the next numbered version (locally) or to a Vertex AI endpoint."""
