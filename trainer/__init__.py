"""sonotrap trainer: data ingestion, training, evaluation, export (needs sonotrap[train])."""
