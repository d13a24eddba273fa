"""d2v metrics logger 'mlflow': a run's params, metrics and files in an MLflow tracking store."""
