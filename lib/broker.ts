// What the server may ask of any broker. The broker is the only part of hapi-pulse that knows about
// other nodes: the listener hands it every publish and broadcast, and it calls the sink back on every
// node (this one included) that has local recipients.

import type { Position } from './protocol';

// What travels between nodes. Everything in it must survive JSON.
export interface PublishEnvelope {
    path: string;
    message: unknown;
    internal?: unknown;                  // passed to subscription filters
    user?: string;                       // only sockets authenticated as this user
    position?: Position;                 // set by the broker when the path keeps history
    at?: number;                         // when server.publish() was called (ms since the epoch), while metrics are exported
}

export interface BroadcastEnvelope {
    message: unknown;
    user?: string;
}

export interface HistoryOptions {
    size: number;                        // entries kept per path
    ttl: number;                         // ms an entry is kept
}

// The answer to "what did I miss on this path since position P?".
export type Recovery =
    | { recovered: true; entries: PublishEnvelope[]; position: Position }
    | { recovered: false; position: Position };

export interface BrokerSink {
    deliver(envelope: PublishEnvelope): void | Promise<void>;
    broadcast(envelope: BroadcastEnvelope): void;
    log?(tags: string[], data: unknown): void;       // broker events (connection errors, reconnects) for server.log
    lost?(path: string): void;                       // publishes of this history path were missed and cannot be replayed
}

export interface Broker {

    // Called once when the hapi server starts; the sink receives every delivery for this node.
    start(sink: BrokerSink): Promise<void>;

    // Called once when the hapi server stops. Must release every connection and timer.
    stop(): Promise<void>;

    // Resolves once the local delivery (if any) has been handed to the sockets and the message has
    // been accepted for the other nodes. Rejects when the message cannot be accepted.
    publish(envelope: PublishEnvelope, history?: HistoryOptions): Promise<void>;

    broadcast(envelope: BroadcastEnvelope): Promise<void>;

    // This node gained its first local subscriber of `path` (with the path's history settings, if it keeps
    // one) / lost its last one.
    // subscribe() resolves once publishes of the path reach this node, and rejects (503) when that cannot be
    // had in time: a sub is answered only then.
    subscribe(path: string, history?: HistoryOptions): Promise<void>;
    unsubscribe(path: string): Promise<void>;

    // For a path this node already subscribed to: null when publishes of it reach this node now, otherwise a
    // promise that resolves once they do again (a lost connection restored) or rejects (503) when that takes
    // too long. Brokers that cannot lose a subscription leave it out.
    confirmed?(path: string): Promise<void> | null;

    // Current position of a path that keeps history, and what came after `since`.
    recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery>;
}
