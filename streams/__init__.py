"""streamscore: streaming real-time prediction on Kafka."""
