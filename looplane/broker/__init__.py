"""Producers, consumers and serializers: the sending and leasing sides of a queue."""

from looplane.broker.consumer import Consumer, Rejected, StorageConsumer
from looplane.broker.producer import Producer, StorageProducer
from looplane.broker.serializer import JSONSerializer, Serializer, dict_to_task, task_to_dict

__all__ = [
    "Consumer",
    "JSONSerializer",
    "Producer",
    "Rejected",
    "Serializer",
    "StorageConsumer",
    "StorageProducer",
    "dict_to_task",
    "task_to_dict",
]
