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
// acknowledged the subscription on the current connection, waiting up to `timeout` for a reconnection. Both
// connections reconnect by themselves with a capped backoff; the subscribing one subscribes again to every
// path this node needs. Publishes made while a node's subscription is down are missed by that node's sockets
// on paths without history. On paths with history the sequencer (sequencer.ts) heals the gap: after
// resubscribing, or on seeing an offset jump, it reads what came after the last publish it delivered from
// the stream, holding live publishes meanwhile, so each is delivered once and in order. A gap it cannot heal
// (new epoch, trimmed entries, Redis unreachable) is logged with tags ['redis', 'gap'].
//
// Here: the two connections and the channels. The Lua and the key names are in scripts.ts, the waits for
// this node's own publishes in echoes.ts.

import { randomBytes } from 'node:crypto';

import { boomify, serverUnavailable } from '@hapi/boom';
import { assert, ignore } from '@hapi/hoek';
import { createClient, ErrorReply } from '@redis/client';
import type { RedisClientOptions } from '@redis/client';

import type { BroadcastEnvelope, Broker, BrokerSink, HistoryOptions, PathPublish, PublishEnvelope, Recovery } from '../../broker';
import type { Position } from '../../protocol';
import { Echoes } from './echoes';
import { RedisPresence } from './presence';
import type { RedisPresenceOptions } from './presence';
import { RedisGroups } from './groups';
import { Keys, Scripts } from './scripts';
import { Sequencer } from './sequencer';

export interface RedisBrokerOptions {
    url?: string;                        // default redis://127.0.0.1:6379
    prefix?: string;                     // prefix of every key and channel, default 'pulse:'
    timeout?: number;                    // ms: connect at start, and every command; default 5000
    client?: Omit<RedisClientOptions, 'url' | 'disableOfflineQueue'>;   // passed to createClient (socket, auth, database, RESP...)
    presence?: RedisPresenceOptions;     // the presence store: { lease } (ms, default 15000)
}

type Client = ReturnType<typeof createClient>;

export class RedisBroker implements Broker {

    // Identifies this node on the bus (and its connections in CLIENT LIST: hapi-pulse:<id>:pub / :sub).
    readonly id = randomBytes(9).toString('base64url');

    // The members of presence paths, for every node (see presence.ts).
    readonly presence: RedisPresence;

    private readonly url: string;
    private readonly timeout: number;
    private readonly clientOptions: RedisBrokerOptions['client'];
    private readonly keys: Keys;
    private readonly scripts: Scripts;
    private readonly own: string;                        // header prefix of this node's messages
    private readonly echoes: Echoes;
    private readonly sequencer: Sequencer;

    // Server-side subscriptions: commands on the membership channel, recorded memberships in hashes (groups.ts).
    readonly groups: RedisGroups;

    private sink: BrokerSink | null = null;
    private pub: Client | null = null;
    private sub: Client | null = null;

    // Channels this node needs, and whether Redis acknowledged the subscription on the current connection.
    private readonly channels = new Map<string, boolean>();
    private readonly confirming = new Map<string, Set<(err?: Error) => void>>();   // subs waiting for that acknowledgement

    constructor(options: RedisBrokerOptions = {}) {

        assert(options && typeof options === 'object', 'Invalid RedisBroker options');
        const { url = 'redis://127.0.0.1:6379', prefix = 'pulse:', timeout = 5000, client = {}, presence = {} } = options;
        assert(typeof url === 'string', 'Invalid RedisBroker url');
        assert(typeof prefix === 'string', 'Invalid RedisBroker prefix');
        assert(Number.isInteger(timeout) && timeout > 0, 'Invalid RedisBroker timeout');
        assert(typeof presence === 'object' && presence !== null && (presence.lease === undefined || Number.isInteger(presence.lease) && presence.lease > 0), 'Invalid RedisBroker presence');

        this.url = url;
        this.timeout = timeout;
        this.clientOptions = client;
        this.keys = new Keys(prefix);
        this.scripts = new Scripts((args) => this.command(args), this.keys);
        this.own = `${this.id}:`;
        this.echoes = new Echoes(timeout);
        this.groups = new RedisGroups((args) => this.command(args), this.scripts, this.keys, (json, publish) => this.announce(this.keys.membership, json, publish));
        this.sequencer = new Sequencer({
            read: (path, since) => this.scripts.missed(path, since),
            deliver: (envelope) => this.sink?.deliver(envelope),
            log: (tags, data) => this.log(['redis', ...tags], data),
            lost: (path) => this.sink?.lost?.(path)
        }, timeout);
        this.presence = new RedisPresence({
            prefix,
            command: (args) => this.command(args),
            sink: () => this.sink,
            log: (tags, data) => this.log(tags, data)
        }, this.id, presence);
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

        sub.on('reconnecting', () => this.sequencer.interrupt());       // lost: what comes before 'ready' is held

        sub.on('ready', () => this.resubscribe());
        pub.on('ready', () => [...this.confirming.keys()].forEach((channel) => this.wake(channel)));
        this.channels.set(this.keys.broadcast, false);
        this.channels.set(this.keys.membership, false);

        try {
            await this.bounded(Promise.all([pub.connect(), sub.connect()]));
        }
        catch (err) {
            await this.stop();
            throw boomify(err as Error, { statusCode: 503, message: `RedisBroker cannot connect to ${this.url}` });
        }

        await Promise.all([this.listen(this.keys.broadcast), this.listen(this.keys.membership)]);
        try {
            await this.presence.start();
        }
        catch (err) {
            await this.stop();
            throw err;
        }
    }

    async stop(): Promise<void> {

        await this.presence.stop();
        this.sink = null;
        this.disconnected();
        for (const waiting of [...this.confirming.values()]) {
            waiting.forEach((waiter) => waiter(serverUnavailable('Redis broker stopped')));
        }

        this.sequencer.stop();

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

        const channel = this.keys.channel(envelope.path);
        const { position, ...rest } = envelope;
        const json = JSON.stringify(rest);
        const seq = this.echoes.next();
        const header = this.own + seq;
        const echo = this.expect(channel, seq);
        try {
            if (!history) {
                await this.command(['PUBLISH', channel, header + '\n' + json]);
            }
            else {
                envelope.position = await this.scripts.publish(envelope.path, header, json, history);
            }
        }
        catch (err) {
            this.echoes.cancel(seq);
            throw err;
        }

        await echo;
    }

    // One script for every path (scripts.ts): one command, the envelope serialised and sent once, each path's
    // history write and publish as publish() would, all in one atomic step. Path i's message carries this node's
    // sequence number first + i, so that the echo of each path this node receives is waited for as in publish().
    async publishMany(publishes: PathPublish[]): Promise<void> {

        if (!publishes.length) {
            return;
        }

        const { path, position, ...rest } = publishes[0]!.envelope;
        const json = JSON.stringify(rest);
        const first = this.echoes.next(publishes.length);
        const echoes = publishes.map(({ envelope }, i) => this.expect(this.keys.channel(envelope.path), first + i));
        let positions: Position[];
        try {
            positions = await this.scripts.publishMany(publishes.map(({ envelope, history }) => ({ path: envelope.path, history })), this.own, first, json.slice(1, -1));
        }
        catch (err) {
            publishes.forEach((_, i) => this.echoes.cancel(first + i));
            throw err;
        }

        let k = 0;
        for (const { envelope, history } of publishes) {
            if (history) {
                envelope.position = positions[k++]!;
            }
        }

        await Promise.all(echoes);
    }

    broadcast(envelope: BroadcastEnvelope): Promise<void> {

        return this.announce(this.keys.broadcast, JSON.stringify(envelope), (message) => this.command(['PUBLISH', this.keys.broadcast, message]));
    }

    // A message on a channel every node receives: resolves once this node handled it too.
    private async announce(channel: string, json: string, publish: (message: string) => Promise<unknown>): Promise<void> {

        const seq = this.echoes.next();
        const echo = this.expect(channel, seq);
        try {
            await publish(this.own + seq + '\n' + json);
        }
        catch (err) {
            this.echoes.cancel(seq);
            throw err;
        }

        await echo;
    }

    // Waits for own message `seq` on `channel` only when this node receives that channel.
    private expect(channel: string, seq: number): Promise<void> | null {

        return this.channels.get(channel) === true ? this.echoes.wait(seq) : null;     // else no local subscriber, or not acknowledged yet
    }

    // ---- Subscriptions: only the paths this node's sockets hold ----

    // Resolves once Redis acknowledged the subscription (waiting for a reconnection up to `timeout`), and on
    // a history path once where it stood is known; rejects with a 503 otherwise.
    async subscribe(path: string, history?: HistoryOptions): Promise<void> {

        const channel = this.keys.channel(path);
        this.channels.set(channel, false);
        this.sequencer.follow(path);
        await Promise.all([this.untilListening(channel), this.listen(channel)]);
        if (history) {
            const position = await this.scripts.position(path);
            if (this.channels.has(channel)) {                        // not left meanwhile
                this.sequencer.baseline(path, position);
            }
        }
    }

    confirmed(path: string): Promise<void> | null {

        const channel = this.keys.channel(path);
        return this.channels.get(channel) === true && this.pub?.isReady ? null : this.untilListening(channel);
    }

    // Not awaited: nothing waits on it, and while disconnected it is queued to run right after the
    // automatic resubscription.
    unsubscribe(path: string): Promise<void> {

        const channel = this.keys.channel(path);
        this.channels.delete(channel);
        this.confirming.get(channel)?.forEach((waiter) => waiter());    // nobody needs it any more
        this.sequencer.leave(path);
        this.sub?.UNSUBSCRIBE(channel, this.onMessage).catch((err) => this.log(['redis', 'unsubscribe', 'error'], err));
        return Promise.resolve();
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

    // After a reconnection: subscribes again (node-redis already did, so this resolves at once for the
    // channels it knew), then reads what each history path missed meanwhile.
    private resubscribe(): void {

        this.log(['redis', 'sub', 'ready'], this.url);
        const all: Promise<void>[] = [];
        for (const channel of this.channels.keys()) {
            const listening = this.listen(channel);
            all.push(listening);
            if (channel !== this.keys.broadcast && channel !== this.keys.membership) {
                const path = this.keys.path(channel);
                listening.then(() => this.sequencer.resume(path));
            }
        }

        // Presence changes and membership commands published while the subscription was down were missed: the
        // followed paths and the recorded memberships of this node's users are read again.
        Promise.all(all).then(() => {

            this.sink?.reloadPresence?.();
            this.sink?.reloadGroups?.();
        });
    }

    private disconnected(): void {

        for (const channel of this.channels.keys()) {
            this.channels.set(channel, false);
        }

        this.echoes.settleAll();
    }

    // Every message of every channel: `<origin>:<seq>\n<envelope JSON>`.
    private readonly onMessage = (payload: string, channel: string): void => {

        const split = payload.indexOf('\n');
        const header = payload.slice(0, split);
        let delivered: void | Promise<void> = undefined;
        try {
            const envelope = JSON.parse(payload.slice(split + 1));
            if (channel === this.keys.broadcast) {
                this.sink?.broadcast(envelope);
            }
            else if (channel === this.keys.membership) {
                delivered = this.sink?.membership?.(envelope);
            }
            else {
                delivered = this.sequencer.accept(envelope);
            }
        }
        catch (err) {
            this.deliveryFailed(err);
        }

        if (header.startsWith(this.own)) {
            this.echoes.echoed(Number(header.slice(this.own.length)), delivered);
        }
        else if (delivered) {
            delivered.catch(this.deliveryFailed);                   // nobody here waits on another node's publish
        }
    };

    private readonly deliveryFailed = (err: unknown): void => {

        this.log(['redis', 'deliver', 'error'], err);
    };

    // ---- History ----

    recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery> {

        return this.scripts.recover(path, since, history);
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
}
