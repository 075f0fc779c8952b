"""Real Kafka and Redis processes for development and tests, without Docker."""
