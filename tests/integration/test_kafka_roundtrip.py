import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def test_produce_and_consume_through_the_broker(kafka_bootstrap, topic_prefix):
    topic = f"{topic_prefix}.roundtrip"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    sent = [f"message-{i}-{uuid.uuid4()}".encode() for i in range(20)]
    try:
        for value in sent:
            await producer.send_and_wait(topic, value, key=b"same-key")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"{topic_prefix}-g",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    received = []
    try:
        async def drain():
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    received.extend(r.value for r in records)
        await asyncio.wait_for(drain(), 60)
    finally:
        await consumer.stop()
    assert received == sent  # one key, one partition: in order, none lost
