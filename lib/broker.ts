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
    once?: string[];                     // a publish to several paths, once per socket: the socket gets it on the first of these it holds
}

// One path of a publish to several paths (see Broker.publishMany), with that path's history settings.
export interface PathPublish {
    envelope: PublishEnvelope;
    history?: HistoryOptions;
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

    // Presence (brokers with a store): this node's open sockets and distinct users (a store that shares nodes
    // reports the sockets with the node's lease); the store lost this node's entries (its lease ran out): send
    // them all again; presence changes may have been missed (a subscription connection was lost): read the
    // followed paths again.
    stats?(): { sockets: number; users: number };
    resendPresence?(): void;
    reloadPresence?(): void;
    membership?(command: MembershipCommand): void | Promise<void>;   // a server-side (un)subscribe, for this node's sockets
    reloadGroups?(): void;                           // membership commands may have been missed (the same): read the recorded memberships again
}

export interface Broker {

    // Called once when the hapi server starts; the sink receives every delivery for this node.
    start(sink: BrokerSink): Promise<void>;

    // Called once when the hapi server stops. Must release every connection and timer.
    stop(): Promise<void>;

    // Resolves once the local delivery (if any) has been handed to the sockets and the message has
    // been accepted for the other nodes. Rejects when the message cannot be accepted.
    publish(envelope: PublishEnvelope, history?: HistoryOptions): Promise<void>;

    // One publish to several paths (server.publish([paths])), as one message: one envelope per path (distinct
    // paths, in the order given), identical but for `path`, so that the broker serialises the rest once. All or
    // nothing: it resolves once every path's publish was accepted (and this node's deliveries handed to the
    // sockets), or rejects having delivered and recorded none of them. Each path is otherwise as if published
    // alone: delivered through sink.deliver() with its own envelope, numbered in its own history (the broker sets
    // each `position`), in order with the path's other publishes. Optional: without it, the server calls publish()
    // once per path, which is not all or nothing.
    publishMany?(publishes: PathPublish[]): Promise<void>;

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

    // Membership of presence paths, kept by the broker (see below).
    readonly presence?: PresenceStore;

    // Server-side subscriptions and persistent memberships (see GroupStore).
    readonly groups?: GroupStore;
}

// ---- Presence (optional: a broker without `presence` serves no subscription that enables it) ----
//
// Each node reports its own sockets on presence paths as absolute counts per (path, user), so that sending
// the same entry twice changes nothing and a node can resend everything after a fault. The store keeps the
// cluster-wide members (one per user, with its socket count and info), the counts (kept up to date, read in
// constant time) and the paths of each user. Whenever a user joins (its first socket on any node), leaves (its
// last one) or gets new info, the store publishes a PresenceChange on presencePath(path) through the broker's
// ordinary delivery, in the order it applied the changes. A user's first socket on a path of a node is admitted
// first (admit(): the limit check and the entry in one atomic step, so that maxMembers holds across nodes).
// Each node also reports which users it holds sockets of (absolute, like the entries): the store keeps, per
// user, how many nodes hold it, so that the cluster's distinct users are one constant-time read. A store shared
// by several nodes holds each node's entries and users under a lease the node renews; those of a node whose
// lease ran out are removed (and their leaves published) by the nodes still alive.

export interface PresenceEntry {
    path: string;
    user: string;                        // '' for the anonymous sockets of this node on the path
    sockets: number;                     // this node's sockets of that user on the path, absolute (0: none left)
    info: string;                        // JSON of the user's info, used when the user is new on the path
}

export interface PresenceCount {
    users: number;                       // members (authenticated users)
    sockets: number;                     // every socket on the path, anonymous ones included
    anonymous: number;                   // sockets without a user
}

// This node holds at least one open socket of `user` (present), or none any more.
export interface PresenceNodeUser {
    user: string;
    present: boolean;
}

// A user's first socket on a path of this node, to admit.
export interface PresenceAdmission {
    path: string;
    user: string;                        // never '' (anonymous sockets are not members)
    info: string;                        // JSON of the user's info, used when the user is new on the path
    max: number;                         // the path's maxMembers
}

export interface PresenceMemberEntry {
    user: string;
    info: string;                        // JSON
    sockets: number;
}

// Published (as a PublishEnvelope message) on presencePath(path) after each change the store applied.
export interface PresenceChange extends PresenceCount {
    joins: [user: string, info: string][];
    leaves: string[];
    updates: [user: string, info: string][];
}

export interface PresenceStore {

    // A secret shared by every node of the store (the same after a restart of a node), from start() on:
    // members are named on the wire by a keyed hash of the user, never by the user itself.
    readonly secret: string;

    // Rejects (503) when the entries cannot be stored now: the caller sends them again later.
    apply(entries: PresenceEntry[], users?: PresenceNodeUser[]): Promise<void>;

    // In order, each in one atomic step: when this node has no entry of the user on the path, stores one socket
    // (as apply() would), unless the user is not a member of the path (on any node) and the path already has `max`
    // members: then nothing changes and its answer is false. Resolves one answer per admission. Rejects (503) when
    // the store cannot be reached: some admissions may have been stored; the caller writes its counts again.
    admit(admissions: PresenceAdmission[]): Promise<boolean[]>;
    members(path: string): Promise<PresenceCount & { members: PresenceMemberEntry[] }>;
    count(path: string): Promise<PresenceCount>;
    paths(user: string): Promise<string[]>;

    // Sets the info of a user present on `path` (false when it is not).
    update(path: string, user: string, info: string): Promise<boolean>;

    // Live nodes; their sockets, as each last reported them; their distinct users, a user held by several nodes
    // counted once (read in constant time, never by loading the users).
    cluster(): Promise<{ nodes: number; sockets: number; users: number }>;
}

// ---- Server-side subscriptions (optional: a broker without `groups` serves none) ----

// Subscribe or unsubscribe every socket of `user`, or the socket `socket`, on every node.
export interface MembershipCommand {
    action: 'subscribe' | 'unsubscribe';
    paths: string[];
    user?: string;
    socket?: string;
    message?: unknown;                   // unsubscribe: sent with the revoke
    persist?: boolean;                   // subscribe: the membership is recorded (what it joins ends when a reload finds the record gone)
}

export interface GroupStore {

    // Tells every node (this one included, through sink.membership). With `persist`, first records (subscribe)
    // or removes (unsubscribe) the user's persistent membership of the paths, in one step with the telling:
    // both happen or neither. A subscribe that would leave the user more than `persist.max` paths is refused
    // (Boom 429) and changes nothing. `ttl` (ms, null: none) ends the recorded membership of those paths.
    send(command: MembershipCommand, persist: { ttl: number | null; max: number } | null): Promise<void>;

    // The recorded memberships: a user's paths, a path's users (unordered, cluster-wide).
    paths(user: string): Promise<string[]>;
    members(path: string): Promise<string[]>;
}

