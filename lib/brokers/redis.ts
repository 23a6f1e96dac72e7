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
// not answer within `timeout` ms rejects the same way. Both connections reconnect by themselves with
// a capped backoff; the subscribing one subscribes again to every path this node needs. Publishes made
// while a node's subscription is down are missed by that node's sockets (history is how they recover).

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

// KEYS: stream, meta. ARGV: channel, header, envelope JSON (no position), size, ttl, fresh epoch.
// The meta hash (epoch, offset) marks a history incarnation: when it is gone, so is the stream.
const publishScript = `
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local json = ARGV[3]
local entry = string.sub(json, 1, -2) .. ',"position":{"epoch":"' .. epoch .. '","offset":' .. string.format('%d', offset) .. '}}'
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '0-' .. string.format('%d', offset), 't', now, 'e', entry)
redis.call('PEXPIRE', stream, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. entry)
return { epoch, offset }
`;

// KEYS: stream, meta. ARGV: since epoch ('' for none), since offset, size, ttl, fresh epoch.
// Returns { epoch, offset, recovered (1 / 0), entry JSON... }.
const recoverScript = `
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
    epoch = ARGV[5]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('PEXPIRE', meta, ARGV[4])
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
if ARGV[1] == '' then
    return { epoch, offset, 1 }
end
local since = tonumber(ARGV[2])
if ARGV[1] ~= epoch or since > offset then
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

const sha1 = (script: string): string => createHash('sha1').update(script).digest('hex');

const scripts = {
    publish: { source: publishScript, sha: sha1(publishScript) },
    recover: { source: recoverScript, sha: sha1(recoverScript) }
};

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

    // Own publishes whose echo this node waits for, by sequence number (Map order = send order).
    private seq = 0;
    private readonly waiters = new Map<number, Waiter>();
    private sweepTimer: NodeJS.Timeout | null = null;

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

    async subscribe(path: string): Promise<void> {

        const channel = this.channel(path);
        this.channels.set(channel, false);
        await this.listen(channel);
    }

    // Not awaited: nothing waits on it, and while disconnected it is queued to run right after the
    // automatic resubscription.
    unsubscribe(path: string): Promise<void> {

        const channel = this.channel(path);
        this.channels.delete(channel);
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
            }
        }
        catch (err) {
            this.log(['redis', 'subscribe', 'error'], err);
        }
    }

    private resubscribe(): void {

        this.log(['redis', 'sub', 'ready'], this.url);
        for (const channel of this.channels.keys()) {
            this.listen(channel);
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
                delivered = this.sink?.deliver(envelope);
            }
        }
        catch (err) {
            this.log(['redis', 'deliver', 'error'], err);
        }

        if (header.startsWith(this.own)) {
            this.echoed(Number(header.slice(this.own.length)), delivered);
        }
    };

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

        const reply = await this.script(scripts.recover, [this.streamKey(path), this.metaKey(path)], [since ? since.epoch : '', since ? `${since.offset}` : '0', `${history.size}`, `${history.ttl}`, freshEpoch()]) as [string, number, number, ...string[]];
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
