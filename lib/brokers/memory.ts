// The default broker: one node, no network. It is the reference every other broker is tested against.

import { randomBytes } from 'node:crypto';

import type { BroadcastEnvelope, Broker, BrokerSink, HistoryOptions, PublishEnvelope, Recovery } from '../broker';
import type { Position } from '../protocol';

interface Stream {
    offset: number;                      // offset of the newest entry
    entries: { envelope: PublishEnvelope; at: number }[];
}

export class MemoryBroker implements Broker {

    // A new epoch per process: offsets from a previous run cannot be mistaken for ours.
    readonly epoch = randomBytes(6).toString('base64url');

    private sink: BrokerSink | null = null;
    private streams = new Map<string, Stream>();

    start(sink: BrokerSink): Promise<void> {

        this.sink = sink;
        return Promise.resolve();
    }

    stop(): Promise<void> {

        this.sink = null;
        return Promise.resolve();
    }

    publish(envelope: PublishEnvelope, history?: HistoryOptions): Promise<void> {

        if (history) {
            envelope.position = this.append(envelope, history);
        }

        return Promise.resolve(this.sink?.deliver(envelope));
    }

    broadcast(envelope: BroadcastEnvelope): Promise<void> {

        this.sink?.broadcast(envelope);
        return Promise.resolve();
    }

    subscribe(): Promise<void> {

        return Promise.resolve();
    }

    unsubscribe(): Promise<void> {

        return Promise.resolve();
    }

    recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery> {

        const stream = this.streams.get(path);
        const offset = stream?.offset ?? 0;
        const position = { epoch: this.epoch, offset };
        if (!since) {
            return Promise.resolve({ recovered: true, entries: [], position });
        }

        if (since.epoch !== this.epoch || since.offset > offset) {
            return Promise.resolve({ recovered: false, position });
        }

        if (!stream) {
            return Promise.resolve({ recovered: true, entries: [], position });
        }

        this.trim(stream, history);
        const missed = offset - since.offset;
        if (missed > stream.entries.length) {
            return Promise.resolve({ recovered: false, position });
        }

        const entries = stream.entries.slice(stream.entries.length - missed).map((entry) => entry.envelope);
        return Promise.resolve({ recovered: true, entries, position });
    }

    private append(envelope: PublishEnvelope, history: HistoryOptions): Position {

        let stream = this.streams.get(envelope.path);
        if (!stream) {
            stream = { offset: 0, entries: [] };
            this.streams.set(envelope.path, stream);
        }

        stream.offset += 1;
        const position = { epoch: this.epoch, offset: stream.offset };
        stream.entries.push({ envelope: { ...envelope, position }, at: Date.now() });
        this.trim(stream, history);
        return position;
    }

    private trim(stream: Stream, history: HistoryOptions): void {

        const oldest = Date.now() - history.ttl;
        let drop = Math.max(0, stream.entries.length - history.size);
        while (drop < stream.entries.length && stream.entries[drop]!.at < oldest) {
            ++drop;
        }

        if (drop) {
            stream.entries.splice(0, drop);
        }
    }
}
