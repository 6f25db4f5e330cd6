"""seva: SeVa (self-supervised visual preference alignment) as cached Prefect stages."""
