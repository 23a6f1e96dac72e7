// The Redis broker: every node of a cluster shares one Redis. Publishes travel over Redis pub/sub on
// one channel per concrete path, and a node subscribes only to the paths its own sockets hold; paths
// that keep history also append to a per-path Redis Stream, atomically with the publish (Lua).
//
// Every node, the publishing one included, delivers from its subscription, so all nodes see the
// publishes of a path in the same (Redis) order and nothing is delivered twice. The publishing node
// waits for its own message to come back before resolving when it has local subscribers.
//
// Fault policy: while the publishing connection is down, publish(), broadcast() and recover() reject at
// once with a 503 Boom error (nothing is buffered, nothing is delivered anywhere); a command Redis does
// not answer within `timeout` ms rejects the same way. subscribe() and confirmed() resolve only once Redis
// acknowledged the subscription on the current connection, waiting up to `timeout` for a reconnection. Both connections reconnect by themselves with
// a capped backoff; the subscribing one subscribes again to every path this node needs. Publishes made
// while a node's subscription is down are missed by that node's sockets on paths without history. On
// paths with history the broker heals the gap itself: it remembers the position of the last publish it
// delivered on each of them, and after resubscribing (or on seeing an offset jump) it reads what came
// after it from the stream, holding live publishes meanwhile, so each is delivered once and in order.
// A gap it cannot heal (new epoch, trimmed entries, Redis unreachable) is logged with tags ['redis', 'gap'].

import { createHash, randomBytes } from 'node:crypto';

import { boomify, serverUnavailable } from '@hapi/boom';
import { assert, ignore } from '@hapi/hoek';
import { createClient, ErrorReply } from '@redis/client';
import type { RedisClientOptions } from '@redis/client';

import type { BroadcastEnvelope, Broker, BrokerSink, HistoryOptions, PublishEnvelope, Recovery } from '../broker';
import type { Position } from '../protocol';

export interface RedisBrokerOptions {
    url?: string;                        // default redis://127.0.0.1:6379
    prefix?: string;                     // prefix of every key and channel, default 'pulse:'
    timeout?: number;                    // ms: connect at start, and every command; default 5000
    client?: Omit<RedisClientOptions, 'url' | 'disableOfflineQueue'>;   // passed to createClient (socket, auth, database, RESP...)
}

type Client = ReturnType<typeof createClient>;

interface Waiter {
    resolve: () => void;
    at: number;
}

// A live publish held while its path heals, and how to settle what onMessage handed to echoed().
interface Held {
    envelope: PublishEnvelope;
    channel: string;
    settle: (delivered: void | Promise<void>) => void;
}

interface Healing {
    held: Held[];
    again: boolean;                      // asked again while a read was in flight: read once more
}

// KEYS: stream, meta. ARGV: channel, header, envelope JSON (no position), size, ttl, fresh epoch.
// The meta hash (epoch, offset) marks a history incarnation: when it is gone, so is the stream.
const publishScript = `
local stream, meta = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'created', now)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local json = ARGV[3]
local entry = string.sub(json, 1, -2) .. ',"position":{"epoch":"' .. epoch .. '","offset":' .. string.format('%d', offset) .. '}}'
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '0-' .. string.format('%d', offset), 't', now, 'e', entry)
redis.call('PEXPIRE', stream, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. entry)
return { epoch, offset }
`;

// KEYS: stream, meta, run. ARGV: since epoch ('' for none), since offset, size, ttl, fresh run id.
// Returns { epoch, offset, recovered (1 / 0), entry JSON... }.
// A path nobody published to stores nothing: its position is \`~<run>:<ms>\` at offset 0, naming this Redis
// run (the run key, lost with the data when Redis restarts without persistence) and this moment. A resume
// from such a position gets the stream made after it, if no older than the ttl (so none came and went).
const recoverScript = `
local stream, meta = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local current = redis.call('HMGET', meta, 'epoch', 'offset', 'created')
local epoch, offset = current[1], tonumber(current[2]) or 0
local sinceEpoch = ARGV[1]
local since = tonumber(ARGV[2])
local run, given
if not epoch or string.sub(sinceEpoch, 1, 1) == '~' then
    run = redis.call('GET', KEYS[3])
    if not run then
        run = ARGV[5]
        redis.call('SET', KEYS[3], run)
    end
    if sinceEpoch ~= '' then
        local sinceRun, at = string.match(sinceEpoch, '^~([^:]*):(%d+)$')
        given = tonumber(at)
        if sinceRun ~= run or since ~= 0 or not given or given > now or now - given > tonumber(ARGV[4]) then
            given = nil
        end
    end
end
if not epoch then
    local empty = '~' .. run .. ':' .. string.format('%d', now)
    if sinceEpoch == '' or given then
        return { empty, 0, 1 }
    end
    return { empty, 0, 0 }
end
if string.sub(sinceEpoch, 1, 1) == '~' then
    if not given or (tonumber(current[3]) or 0) < given then
        return { epoch, offset, 0 }
    end
    sinceEpoch = epoch
end
if sinceEpoch == '' then
    return { epoch, offset, 1 }
end
if sinceEpoch ~= epoch or since > offset then
    return { epoch, offset, 0 }
end
local missed = offset - since
if missed == 0 then
    return { epoch, offset, 1 }
end
if missed > tonumber(ARGV[3]) then
    return { epoch, offset, 0 }
end
local time = redis.call('TIME')
local oldest = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) - tonumber(ARGV[4])
local range = redis.call('XRANGE', stream, '0-' .. string.format('%d', since + 1), '+', 'COUNT', missed)
if #range ~= missed then
    return { epoch, offset, 0 }
end
local result = { epoch, offset, 1 }
for i, item in ipairs(range) do
    if tonumber(item[2][2]) < oldest then
        return { epoch, offset, 0 }
    end
    result[i + 3] = item[2][4]
end
return result
`;

// KEYS: stream, meta. ARGV: epoch, offset of the last publish this node delivered.
// Returns { epoch ('' when the path has no history any more), offset, entry JSON... }: every entry still
// kept after that position, or after offset 0 of the current epoch when it is another one.
const catchUpScript = `
local stream, meta = KEYS[1], KEYS[2]
local current = redis.call('HMGET', meta, 'epoch', 'offset')
local epoch, offset = current[1], tonumber(current[2]) or 0
if not epoch then
    return { '', 0 }
end
local since = 0
if epoch == ARGV[1] then
    since = tonumber(ARGV[2])
end
local result = { epoch, offset }
if offset <= since then
    return result
end
local range = redis.call('XRANGE', stream, '0-' .. string.format('%d', since + 1), '+', 'COUNT', offset - since)
for i, item in ipairs(range) do
    result[i + 2] = item[2][4]
end
return result
`;

const sha1 = (script: string): string => createHash('sha1').update(script).digest('hex');

const scripts = {
    publish: { source: publishScript, sha: sha1(publishScript) },
    recover: { source: recoverScript, sha: sha1(recoverScript) },
    catchUp: { source: catchUpScript, sha: sha1(catchUpScript) }
};

// Whether `position` comes after a publish not delivered since `last` (offsets of an epoch start at 1).
const jumps = (last: Position, position: Position): boolean => position.epoch === last.epoch ? position.offset > last.offset + 1 : position.offset > 1;

const freshEpoch = (): string => randomBytes(6).toString('base64url');

export class RedisBroker implements Broker {

    // Identifies this node on the bus (and its connections in CLIENT LIST: hapi-pulse:<id>:pub / :sub).
    readonly id = randomBytes(9).toString('base64url');

    private readonly url: string;
    private readonly prefix: string;
    private readonly timeout: number;
    private readonly clientOptions: RedisBrokerOptions['client'];
    private readonly broadcastChannel: string;
    private readonly own: string;                        // header prefix of this node's messages

    private sink: BrokerSink | null = null;
    private pub: Client | null = null;
    private sub: Client | null = null;

    // Channels this node needs, and whether Redis acknowledged the subscription on the current connection.
    private readonly channels = new Map<string, boolean>();
    private readonly confirming = new Map<string, Set<(err?: Error) => void>>();   // subs waiting for that acknowledgement

    // Own publishes whose echo this node waits for, by sequence number (Map order = send order).
    private seq = 0;
    private readonly waiters = new Map<number, Waiter>();
    private sweepTimer: NodeJS.Timeout | null = null;

    // History paths this node is subscribed to: the position of the last publish delivered to the sink
    // (updated in place), and the paths whose gap is being read from the stream.
    private readonly positions = new Map<string, Position>();
    private readonly baselines = new Map<string, Position>();
    private readonly healing = new Map<string, Healing>();

    constructor(options: RedisBrokerOptions = {}) {

        assert(options && typeof options === 'object', 'Invalid RedisBroker options');
        const { url = 'redis://127.0.0.1:6379', prefix = 'pulse:', timeout = 5000, client = {} } = options;
        assert(typeof url === 'string', 'Invalid RedisBroker url');
        assert(typeof prefix === 'string', 'Invalid RedisBroker prefix');
        assert(Number.isInteger(timeout) && timeout > 0, 'Invalid RedisBroker timeout');

        this.url = url;
        this.prefix = prefix;
        this.timeout = timeout;
        this.clientOptions = client;
        this.broadcastChannel = `${prefix}b`;
        this.own = `${this.id}:`;
    }

    // ---- Lifecycle ----

    async start(sink: BrokerSink): Promise<void> {

        assert(!this.pub, 'RedisBroker already started');
        this.sink = sink;

        const socket = { reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 2000), ...this.clientOptions!.socket };
        const pub = createClient({ commandsQueueMaxLength: 10000, ...this.clientOptions, url: this.url, socket, name: `hapi-pulse:${this.id}:pub`, disableOfflineQueue: true } as RedisClientOptions);
        const sub = pub.duplicate({ name: `hapi-pulse:${this.id}:sub`, disableOfflineQueue: false });
        this.pub = pub;
        this.sub = sub;

        pub.on('error', (err: Error) => this.log(['redis', 'pub', 'error'], err));
        sub.on('error', (err: Error) => {

            this.log(['redis', 'sub', 'error'], err);
            this.disconnected();
        });

        sub.on('ready', () => this.resubscribe());
        pub.on('ready', () => [...this.confirming.keys()].forEach((channel) => this.wake(channel)));
        this.channels.set(this.broadcastChannel, false);

        try {
            await this.bounded(Promise.all([pub.connect(), sub.connect()]));
        }
        catch (err) {
            await this.stop();
            throw boomify(err as Error, { statusCode: 503, message: `RedisBroker cannot connect to ${this.url}` });
        }

        await this.listen(this.broadcastChannel);
    }

    async stop(): Promise<void> {

        this.sink = null;
        this.disconnected();
        for (const waiting of [...this.confirming.values()]) {
            waiting.forEach((waiter) => waiter(serverUnavailable('Redis broker stopped')));
        }

        this.positions.clear();
        this.baselines.clear();
        for (const { held } of this.healing.values()) {
            held.splice(0).forEach((item) => item.settle());
        }

        this.healing.clear();

        const clients = [this.pub, this.sub];
        this.pub = null;
        this.sub = null;
        for (const client of clients) {
            if (client?.isReady) {
                await this.bounded(client.close()).catch(ignore);
            }

            client?.destroy();
        }

        for (const channel of this.channels.keys()) {
            this.channels.set(channel, false);
        }
    }

    // ---- Publishing ----

    async publish(envelope: PublishEnvelope, history?: HistoryOptions): Promise<void> {

        const channel = this.channel(envelope.path);
        const { position, ...rest } = envelope;
        const json = JSON.stringify(rest);
        const seq = ++this.seq;
        const header = this.own + seq;
        const echo = this.expect(channel, seq);
        try {
            if (!history) {
                await this.command(['PUBLISH', channel, header + '\n' + json]);
            }
            else {
                const [epoch, offset] = await this.script(scripts.publish, [this.streamKey(envelope.path), this.metaKey(envelope.path)], [channel, header, json, `${history.size}`, `${history.ttl}`, freshEpoch()]) as [string, number];
                envelope.position = { epoch, offset: Number(offset) };
            }
        }
        catch (err) {
            this.release(seq);
            throw err;
        }

        await echo;
    }

    async broadcast(envelope: BroadcastEnvelope): Promise<void> {

        const seq = ++this.seq;
        const echo = this.expect(this.broadcastChannel, seq);
        try {
            await this.command(['PUBLISH', this.broadcastChannel, this.own + seq + '\n' + JSON.stringify(envelope)]);
        }
        catch (err) {
            this.release(seq);
            throw err;
        }

        await echo;
    }

    // ---- Subscriptions: only the paths this node's sockets hold ----

    // Resolves once Redis acknowledged the subscription (waiting for a reconnection up to `timeout`), and on
    // a history path once where it stood is known; rejects with a 503 otherwise.
    async subscribe(path: string, history?: HistoryOptions): Promise<void> {

        const channel = this.channel(path);
        this.channels.set(channel, false);
        await Promise.all([this.untilListening(channel), this.listen(channel)]);
        if (history) {
            await this.markBaseline(path, channel);
        }
    }

    confirmed(path: string): Promise<void> | null {

        const channel = this.channel(path);
        return this.channels.get(channel) === true && this.pub?.isReady ? null : this.untilListening(channel);
    }

    // The subs waiting for `channel` go on once Redis acknowledged it and the publishing connection is up too
    // (the position of a history path is read on it right after; both reconnect independently).
    private wake(channel: string): void {

        const waiting = this.confirming.get(channel);                   // none once stopped: stop() refused them
        if (waiting && this.channels.get(channel) === true && this.pub!.isReady) {
            waiting.forEach((waiter) => waiter());
        }
    }

    private untilListening(channel: string): Promise<void> {

        return new Promise((resolve, reject) => {

            const waiting = this.confirming.get(channel) ?? new Set();
            this.confirming.set(channel, waiting);
            const waiter = (err?: Error) => {

                clearTimeout(timer);
                waiting.delete(waiter);
                if (!waiting.size) {
                    this.confirming.delete(channel);
                }

                return err ? reject(err) : resolve();
            };

            const timer = setTimeout(() => waiter(serverUnavailable('Redis broker unavailable')), this.timeout);
            waiting.add(waiter);
        });
    }

    // Where a history path stood when this node subscribed, so that a subscription dropped before any
    // publish was delivered can still be healed. Only used if no publish arrives before the drop.
    private async markBaseline(path: string, channel: string): Promise<void> {

        const [epoch, offset] = await this.command(['HMGET', this.metaKey(path), 'epoch', 'offset']) as [string | null, string | null];
        if (this.channels.has(channel)) {                        // not left meanwhile
            this.baselines.set(path, { epoch: epoch ?? '', offset: Number(offset ?? 0) });
        }
    }

    // Not awaited: nothing waits on it, and while disconnected it is queued to run right after the
    // automatic resubscription.
    unsubscribe(path: string): Promise<void> {

        const channel = this.channel(path);
        this.channels.delete(channel);
        this.confirming.get(channel)?.forEach((waiter) => waiter());    // nobody needs it any more
        this.positions.delete(path);
        this.baselines.delete(path);
        this.sub?.UNSUBSCRIBE(channel, this.onMessage).catch((err) => this.log(['redis', 'unsubscribe', 'error'], err));
        return Promise.resolve();
    }

    // Subscribes (again) to a channel; resolves when Redis acknowledged it, or at once while the
    // connection is down (the next 'ready' subscribes again). Never rejects.
    private async listen(channel: string): Promise<void> {

        const sub = this.sub;
        if (!sub?.isReady) {
            return;
        }

        try {
            await this.bounded(sub.SUBSCRIBE(channel, this.onMessage));
            if (this.channels.has(channel)) {                  // not left meanwhile
                this.channels.set(channel, true);
                this.wake(channel);
            }
        }
        catch (err) {
            this.log(['redis', 'subscribe', 'error'], err);
        }
    }

    // After a reconnection: subscribes again, then reads what each history path missed meanwhile.
    private resubscribe(): void {

        this.log(['redis', 'sub', 'ready'], this.url);
        const listening = new Map<string, Promise<void>>();
        for (const channel of this.channels.keys()) {
            listening.set(channel, this.listen(channel));
        }

        for (const [path, baseline] of this.baselines) {
            if (!this.positions.has(path)) {
                this.positions.set(path, { ...baseline });           // nothing delivered before the drop
            }
        }

        this.baselines.clear();
        for (const path of this.positions.keys()) {
            listening.get(this.channel(path))!.then(() => this.heal(path));
        }
    }

    private disconnected(): void {

        for (const channel of this.channels.keys()) {
            this.channels.set(channel, false);
        }

        this.resolveWaiters(Infinity);
    }

    // Every message of every channel: `<origin>:<seq>\n<envelope JSON>`.
    private readonly onMessage = (payload: string, channel: string): void => {

        const split = payload.indexOf('\n');
        const header = payload.slice(0, split);
        let delivered: void | Promise<void> = undefined;
        try {
            const envelope = JSON.parse(payload.slice(split + 1));
            if (channel === this.broadcastChannel) {
                this.sink?.broadcast(envelope);
            }
            else {
                delivered = this.accept(envelope, channel);
            }
        }
        catch (err) {
            this.deliveryFailed(err);
        }

        if (header.startsWith(this.own)) {
            this.echoed(Number(header.slice(this.own.length)), delivered);
        }
        else if (delivered) {
            delivered.catch(this.deliveryFailed);                   // nobody here waits on another node's publish
        }
    };

    private readonly deliveryFailed = (err: unknown): void => {

        this.log(['redis', 'deliver', 'error'], err);
    };

    // ---- Delivery of history paths: once, in order, gaps healed from the stream ----

    // Hot path: one comparison per publish. Offsets of a path are contiguous on its channel (one Lua
    // script increments and publishes), so an offset already seen is a duplicate and a jump is a gap.
    private accept(envelope: PublishEnvelope, channel: string): void | Promise<void> {

        const position = envelope.position;
        if (!position) {
            return this.sink?.deliver(envelope);
        }

        const path = envelope.path;
        const healing = this.healing.get(path);
        const last = this.positions.get(path);
        if (healing || last && jumps(last, position)) {
            return new Promise((settle) => this.heal(path, { envelope, channel, settle }));
        }

        if (last) {
            if (position.epoch === last.epoch && position.offset <= last.offset) {
                return;                                                  // already delivered
            }

            last.epoch = position.epoch;
            last.offset = position.offset;
        }
        else if (this.channels.has(channel)) {
            this.positions.set(path, { epoch: position.epoch, offset: position.offset });
        }

        return this.sink?.deliver(envelope);
    }

    // Reads what `path` missed after the last delivered position; live publishes wait in `held`.
    private heal(path: string, item?: Held): void {

        const healing = this.healing.get(path);
        if (healing) {
            if (item) {
                healing.held.push(item);                             // checked again when released
            }
            else {
                healing.again = true;                                // reconnected: the read may predate it
            }

            return;
        }

        const fresh = { held: item ? [item] : [], again: true };
        this.healing.set(path, fresh);
        this.catchUp(path, fresh);
    }

    private async catchUp(path: string, healing: Healing): Promise<void> {

        const deadline = Date.now() + this.timeout;
        let failed = false;
        for (let last = this.positions.get(path); healing.again && last && this.healing.get(path) === healing; last = this.positions.get(path)) {
            healing.again = false;
            try {
                const reply = await this.script(scripts.catchUp, [this.streamKey(path), this.metaKey(path)], [last.epoch, `${last.offset}`]) as [string, number, ...string[]];
                if (this.positions.get(path) === last) {                // not left meanwhile
                    this.caughtUp(path, last, reply);
                }
            }
            catch (err) {
                if (Date.now() >= deadline) {
                    this.log(['redis', 'gap', 'error'], { path, since: { ...last }, error: err });
                    this.sink?.lost?.(path);
                    failed = true;
                    break;
                }

                healing.again = true;                                    // Redis unreachable: retry until `timeout`
                await new Promise((resolve) => setTimeout(resolve, 100));
            }
        }

        if (this.healing.get(path) === healing) {
            this.healing.delete(path);
        }

        // What is still missing before the first held publish cannot be read: it is lost.
        const last = this.positions.get(path);
        const first = healing.held[0]?.envelope.position;
        if (last && first && jumps(last, first)) {
            if (!failed) {
                this.gap({ path, reason: 'missing', since: { ...last }, next: first });
            }

            last.epoch = first.epoch;
            last.offset = first.offset - 1;
        }

        // Through accept() again: drops what the read delivered, heals again on a jump after the first.
        for (const { envelope, channel, settle } of healing.held) {
            settle(this.accept(envelope, channel));
        }
    }

    private caughtUp(path: string, last: Position, [epoch, offset, ...entries]: [string, number, ...string[]]): void {

        const current = { epoch, offset: Number(offset) };
        if (epoch !== last.epoch && last.epoch !== '') {
            this.gap({ path, reason: 'epoch', since: { ...last }, position: current });
        }

        const envelopes: PublishEnvelope[] = entries.map((entry) => JSON.parse(entry));
        const expected = epoch === last.epoch ? last.offset + 1 : 1;
        const first = envelopes[0]?.position!.offset ?? current.offset + 1;
        if (first > expected) {
            this.gap({ path, reason: 'trimmed', since: { epoch, offset: expected - 1 }, missed: first - expected });
        }

        last.epoch = epoch;
        last.offset = first - 1;
        for (const envelope of envelopes) {
            last.offset = envelope.position!.offset;
            this.sink?.deliver(envelope)?.catch(this.deliveryFailed);
        }
    }

    // ---- Waiting for our own publishes to come back (local delivery) ----

    private expect(channel: string, seq: number): Promise<void> | null {

        if (this.channels.get(channel) !== true) {
            return null;                                         // no local subscriber, or not acknowledged yet
        }

        return new Promise((resolve) => {

            this.waiters.set(seq, { resolve, at: Date.now() });
            this.sweepTimer ??= setTimeout(() => this.sweep(), this.timeout);
        });
    }

    // Redis sends a connection's publishes back in order: an earlier own publish that did not come
    // back (its path was left meanwhile) never will.
    private echoed(seq: number, delivered: void | Promise<void>): void {

        const waiter = this.waiters.get(seq);
        this.waiters.delete(seq);
        this.resolveWaiters(seq);
        if (waiter) {
            Promise.resolve(delivered).catch(ignore).then(waiter.resolve);
        }
    }

    private release(seq: number): void {

        this.waiters.get(seq)?.resolve();
        this.waiters.delete(seq);
    }

    private resolveWaiters(upTo: number): void {

        for (const [seq, waiter] of this.waiters) {
            if (seq > upTo) {
                break;
            }

            this.waiters.delete(seq);
            waiter.resolve();
        }

        if (!this.waiters.size && this.sweepTimer) {
            clearTimeout(this.sweepTimer);
            this.sweepTimer = null;
        }
    }

    private sweep(): void {

        this.sweepTimer = null;
        const oldest = Date.now() - this.timeout;
        for (const [seq, waiter] of this.waiters) {
            if (waiter.at > oldest) {
                break;
            }

            this.waiters.delete(seq);
            waiter.resolve();
        }

        if (this.waiters.size) {
            this.sweepTimer = setTimeout(() => this.sweep(), this.timeout);
        }
    }

    // ---- History ----

    async recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery> {

        const reply = await this.script(scripts.recover, [this.streamKey(path), this.metaKey(path), `${this.prefix}run`], [since ? since.epoch : '', since ? `${since.offset}` : '0', `${history.size}`, `${history.ttl}`, freshEpoch()]) as [string, number, number, ...string[]];
        const [epoch, offset, recovered, ...entries] = reply;
        const position = { epoch, offset: Number(offset) };
        if (!Number(recovered)) {
            return { recovered: false, position };
        }

        return { recovered: true, entries: entries.map((entry) => JSON.parse(entry)), position };
    }

    // ---- Redis commands ----

    private async command(args: string[]): Promise<unknown> {

        const pub = this.pub;
        if (!pub?.isReady) {
            throw serverUnavailable('Redis broker unavailable');
        }

        try {
            return await this.bounded(pub.sendCommand(args));      // node-redis only times out unsent commands
        }
        catch (err) {
            // An error reply is Redis refusing the command; anything else is the connection failing.
            throw boomify(err as Error, { statusCode: err instanceof ErrorReply ? 500 : 503, message: 'Redis broker command failed' });
        }
    }

    private async script(script: { source: string; sha: string }, keys: string[], args: string[]): Promise<unknown> {

        try {
            return await this.command(['EVALSHA', script.sha, `${keys.length}`, ...keys, ...args]);
        }
        catch (err) {
            if (!(err as Error).message.includes('NOSCRIPT')) {
                throw err;
            }

            return await this.command(['EVAL', script.source, `${keys.length}`, ...keys, ...args]);
        }
    }

    private bounded<T>(promise: Promise<T>): Promise<T> {

        let timer: NodeJS.Timeout;
        const expired = new Promise<never>((_, reject) => {

            timer = setTimeout(() => reject(new Error(`Redis did not answer within ${this.timeout}ms`)), this.timeout);
        });

        return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
    }

    // A gap this node cannot heal: logged, and the server tells the sockets that track positions.
    private gap(data: { path: string; reason: string; [key: string]: unknown }): void {

        this.log(['redis', 'gap'], data);
        this.sink?.lost?.(data.path);
    }

    private log(tags: string[], data: unknown): void {

        this.sink?.log?.(tags, data);
    }

    private channel(path: string): string {

        return `${this.prefix}p:${path}`;
    }

    private streamKey(path: string): string {

        return `${this.prefix}h:${path}`;
    }

    private metaKey(path: string): string {

        return `${this.prefix}m:${path}`;
    }
}
