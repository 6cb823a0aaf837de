"""wa-consumer: outbound WhatsApp messages from RabbitMQ to Meta's Cloud API."""

__version__ = "0.1.0"
