// The default broker: one node, no network. It is the reference every other broker is tested against.
//
// History: one stream per path that keeps history, with the path's own size and ttl. Like a Redis key
// under PEXPIRE, a whole stream expires once its newest activity (its last publish, or its creation) is
// older than its ttl: it is deleted, and the next publish or recovery of that path starts a new stream
// under a new epoch, offsets from 1. Expired streams are dropped when their path is used again, and by
// one unref'd sweep timer (between start() and stop()) for the paths nobody uses any more.
//
// A stream is made by a publish only: recovering (subscribing to) a path nobody published to stores
// nothing. Its position then names this process and the moment (`<epoch>~<ms>`, offset 0), so that a
// later resume knows whether the stream that may exist by then started after it. At most `maxStreams`
// streams are kept: a publish that needs one more drops the least recently published one, as if it had
// expired.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';

import { tooManyRequests } from '@hapi/boom';
import { assert } from '@hapi/hoek';

import type { BroadcastEnvelope, Broker, BrokerSink, GroupStore, HistoryOptions, MembershipCommand, PathPublish, PresenceStore, PublishEnvelope, Recovery } from '../broker';
import type { Position } from '../protocol';
import { MemoryPresence } from './memory-presence';

interface Entry {
    envelope: PublishEnvelope;           // as published, position included (kept, not copied)
    at: number;
}

export interface MemoryBrokerOptions {
    maxStreams?: number;                 // paths whose history is kept at once, default 10000
}

interface Stream {
    epoch: string;
    created: number;
    offset: number;                      // offset of the newest publish (0: none yet)
    size: number;                        // this path's history settings, from its last publish or its creation
    ttl: number;
    touched: number;                     // time of the last publish, or of the creation
    entries: Entry[];                    // entries[head..] are kept, oldest first, offsets contiguous up to `offset`
    head: number;                        // entries before it are dropped and wait for the next compaction
}

const minSweep = 1000;                   // ms between sweeps: the shortest ttl seen, within these bounds
const maxSweep = 60000;

const now = (): number => performance.now();          // monotonic: ttls are durations

export class MemoryBroker implements Broker {

    // This process's epoch, so that offsets from a previous run cannot be mistaken for ours. Streams
    // created before any stream expired use it as is; a stream created after an expiry gets
    // `<epoch>.<n>` (n counts the expiries so far), so a path recreated after its history expired
    // never reuses the epoch of its previous incarnation.
    readonly epoch = randomBytes(6).toString('base64url');

    readonly maxStreams: number;

    // Presence of this node's sockets (the only node).
    private readonly members = new MemoryPresence(() => this.sink);
    readonly presence: PresenceStore = this.members;

    private sink: BrokerSink | null = null;
    private lastEviction = -Infinity;                   // when the cap last dropped a stream
    private streams = new Map<string, Stream>();
    private expiries = 0;
    private shortest = maxSweep;                        // shortest ttl seen, bounded by maxSweep
    private timer: NodeJS.Timeout | null = null;

    readonly groups: GroupStore & { readonly size: number; sweep(time: number): void };

    constructor(options: MemoryBrokerOptions = {}) {

        const { maxStreams = 10000 } = options;
        assert(Number.isInteger(maxStreams) && maxStreams > 0, 'Invalid MemoryBroker maxStreams');
        this.maxStreams = maxStreams;
        this.groups = new MemoryGroups((command) => this.sink?.membership?.(command));
    }

    // Number of paths whose history is currently held (expired ones are dropped by the next sweep or
    // use of their path). Read-only; for monitoring and tests.
    get size(): number {

        return this.streams.size;
    }

    start(sink: BrokerSink): Promise<void> {

        this.sink = sink;
        this.schedule();
        return Promise.resolve();
    }

    stop(): Promise<void> {

        this.sink = null;
        this.members.clear();
        clearInterval(this.timer ?? undefined);
        this.timer = null;
        return Promise.resolve();
    }

    publish(envelope: PublishEnvelope, history?: HistoryOptions): Promise<void> {

        if (history) {
            this.append(envelope, history);
        }

        return Promise.resolve(this.sink?.deliver(envelope));
    }

    // One call for every path. The message is serialised once first, so that one that cannot be (a cycle, a
    // BigInt) rejects before any history is written or any path delivered.
    publishMany(publishes: PathPublish[]): Promise<void> {

        try {
            JSON.stringify(publishes[0]?.envelope.message);
        }
        catch (err) {
            return Promise.reject(err);
        }

        for (const { envelope, history } of publishes) {
            if (history) {
                this.append(envelope, history);
            }
        }

        const sink = this.sink;
        return Promise.all(sink ? publishes.map(({ envelope }) => sink.deliver(envelope)) : []).then(() => undefined);
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

        const time = now();
        const stream = this.live(path, time);
        const empty = since ? this.emptySince(since, time, history) : null;
        if (!stream) {
            const position = { epoch: `${this.epoch}~${Math.floor(time)}`, offset: 0 };
            return Promise.resolve(!since || typeof empty === 'number' ? { recovered: true, entries: [], position } : { recovered: false, position });
        }

        const position = { epoch: stream.epoch, offset: stream.offset };
        if (empty !== null) {
            if (empty === false || stream.created < empty) {
                return Promise.resolve({ recovered: false, position });
            }

            since = { epoch: stream.epoch, offset: 0 };                          // the stream started after that position
        }

        if (!since) {
            return Promise.resolve({ recovered: true, entries: [], position });
        }

        const missed = stream.offset - since.offset;
        const { entries } = stream;
        const first = entries.length - missed;                                   // index of the oldest missed entry
        if (since.epoch !== stream.epoch || missed < 0 || missed > history.size || first < stream.head ||
            missed && entries[first]!.at < time - history.ttl) {

            return Promise.resolve({ recovered: false, position });
        }

        return Promise.resolve({ recovered: true, entries: entries.slice(first).map((entry) => entry.envelope), position });
    }

    // For a position given while the path had no stream: the time it was given, or false when what came
    // after it cannot be known (another process, older than the ttl so a stream may have come and gone, or
    // the cap dropped a stream since). Null for any other position.
    private emptySince(since: Position, time: number, history: HistoryOptions): number | false | null {

        const at = since.epoch.indexOf('~');
        if (at === -1) {
            return null;
        }

        const given = Number(since.epoch.slice(at + 1));
        if (since.epoch.slice(0, at) !== this.epoch || since.offset !== 0 || !(given <= time) || time - given > history.ttl || this.lastEviction >= given) {
            return false;
        }

        return given;
    }

    // Sets the envelope's position and keeps the envelope itself (no copy): it must not change afterwards.
    private append(envelope: PublishEnvelope, history: HistoryOptions): void {

        const time = now();
        let stream = this.live(envelope.path, time);
        if (stream) {
            this.streams.delete(envelope.path);                                  // most recently published last
            this.streams.set(envelope.path, stream);
        }
        else {
            stream = this.create(envelope.path, history, time);
        }

        stream.size = history.size;
        stream.ttl = history.ttl;
        this.seen(history.ttl);
        stream.touched = time;
        stream.offset += 1;
        envelope.position = { epoch: stream.epoch, offset: stream.offset };
        stream.entries.push({ envelope, at: time });
        this.trim(stream, time);
    }

    // The stream of `path`, unless it has expired (then it is dropped).
    private live(path: string, time: number): Stream | undefined {

        const stream = this.streams.get(path);
        if (stream && this.expired(stream, time)) {
            this.drop(path);
            return undefined;
        }

        return stream;
    }

    private create(path: string, history: HistoryOptions, time: number): Stream {

        if (this.streams.size >= this.maxStreams) {
            this.drop(this.streams.keys().next().value!);
            this.lastEviction = time;
        }

        const epoch = this.expiries ? `${this.epoch}.${this.expiries}` : this.epoch;
        const stream: Stream = { epoch, created: time, offset: 0, size: history.size, ttl: history.ttl, touched: time, entries: [], head: 0 };
        this.streams.set(path, stream);
        this.seen(history.ttl);
        return stream;
    }

    private seen(ttl: number): void {

        if (ttl < this.shortest) {
            this.shortest = ttl;
            if (this.timer) {
                this.schedule();                                                 // sweep sooner
            }
        }
    }

    private expired(stream: Stream, time: number): boolean {

        return stream.touched < time - stream.ttl;
    }

    private drop(path: string): void {

        this.streams.delete(path);
        ++this.expiries;
    }

    // Drops the entries beyond the stream's size or older than its ttl. Dropping only moves `head`; the
    // array is compacted once at least half of it is dropped, so each entry is copied O(1) times.
    private trim(stream: Stream, time: number): void {

        const { entries } = stream;
        const oldest = time - stream.ttl;
        let head = Math.max(stream.head, entries.length - stream.size);
        while (entries[head]!.at < oldest) {                                 // stops at the newest: it is the stream's last activity, so not expired
            ++head;
        }

        if (head * 2 >= entries.length) {
            entries.splice(0, head);
            head = 0;
        }

        stream.head = head;
    }

    private sweep(): void {

        const time = now();
        this.groups.sweep(time);
        for (const [path, stream] of this.streams) {
            if (this.expired(stream, time)) {
                this.drop(path);
            }
            else {
                this.trim(stream, time);
            }
        }
    }

    private schedule(): void {

        clearInterval(this.timer ?? undefined);
        this.timer = setInterval(() => this.sweep(), Math.max(minSweep, this.shortest));
        this.timer.unref();
    }
}

// Persistent memberships of this process: user -> path -> end of the membership (null: none), and the reverse
// index. Ended ones are dropped when read and by the broker's sweep.
class MemoryGroups implements GroupStore {

    private readonly byUser = new Map<string, Map<string, number | null>>();
    private readonly byPath = new Map<string, Set<string>>();

    constructor(private readonly tell: (command: MembershipCommand) => void | Promise<void>) { }

    // Users with at least one membership (ended ones count until read or swept). Read-only; for monitoring and tests.
    get size(): number {

        return this.byUser.size;
    }

    send(command: MembershipCommand, persist: { ttl: number | null; max: number } | null): Promise<void> {

        if (persist) {
            const user = command.user!;                              // persistent memberships are a user's
            const time = now();
            const held = this.live(user, time);
            if (command.action === 'subscribe') {
                const added = command.paths.filter((path) => !held?.has(path)).length;
                if ((held?.size ?? 0) + added > persist.max) {
                    return Promise.reject(tooManyRequests('Too many subscriptions'));
                }

                for (const path of command.paths) {
                    this.set(user, path, persist.ttl === null ? null : time + persist.ttl);
                }
            }
            else {
                for (const path of command.paths) {
                    this.remove(user, path);
                }
            }
        }

        return Promise.resolve(this.tell(command));
    }

    paths(user: string): Promise<string[]> {

        return Promise.resolve([...this.live(user, now())?.keys() ?? []]);
    }

    members(path: string): Promise<string[]> {

        const time = now();
        return Promise.resolve([...this.byPath.get(path) ?? []].filter((user) => this.live(user, time)?.has(path)));
    }

    sweep(time: number): void {

        for (const user of [...this.byUser.keys()]) {
            this.live(user, time);
        }
    }

    // The user's memberships, the ended ones dropped.
    private live(user: string, time: number): Map<string, number | null> | undefined {

        const paths = this.byUser.get(user);
        for (const [path, end] of paths ?? []) {
            if (end !== null && end <= time) {
                this.remove(user, path);
            }
        }

        return this.byUser.get(user);
    }

    private set(user: string, path: string, end: number | null): void {

        let paths = this.byUser.get(user);
        if (!paths) {
            paths = new Map();
            this.byUser.set(user, paths);
        }

        paths.set(path, end);
        let users = this.byPath.get(path);
        if (!users) {
            users = new Set();
            this.byPath.set(path, users);
        }

        users.add(user);
    }

    private remove(user: string, path: string): void {

        const paths = this.byUser.get(user);
        if (!paths?.delete(path)) {
            return;
        }

        if (!paths.size) {
            this.byUser.delete(user);
        }

        const users = this.byPath.get(path)!;
        users.delete(user);
        if (!users.size) {
            this.byPath.delete(path);
        }
    }
}

