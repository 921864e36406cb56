"""atdata-ingest: the firehose ingestion service of the atdata federation.

One process consumes ``com.atproto.sync.subscribeRepos`` from a relay or PDS and
writes every event to a durable PostgreSQL log (:mod:`.schema`), in batches whose
transaction also advances the one-row cursor; the consumer API (:mod:`.api`) serves
filtered events from that log to the other apps, never from the relay.
"""

__version__ = "0.1.0"
