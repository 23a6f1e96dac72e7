// Owns the WebSocket server: accepts upgrades (origin, limits, the application's hook), keeps the
// socket registry and user index, runs heartbeats and credential re-checks spread over their interval
// (rounds.ts), batches writes per tick, fans publishes out, and shuts down cleanly. Sockets see it only as their SocketHost.

import type { IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';

import * as Boom from '@hapi/boom';
import type { Server } from '@hapi/hapi';
import { WebSocketServer } from 'ws';
import type { WebSocket } from 'ws';

import type { BroadcastEnvelope, Broker, HistoryOptions, PublishEnvelope, Recovery } from '../broker';
import type { Settings } from '../settings';
import { CloseCode, defaultLimits, encode } from '../protocol';
import type { Position } from '../protocol';
import * as Auth from './auth';
import { Deflater, negotiation } from './compression';
import { userKey } from './auth';
import { Deadlines } from './deadlines';
import { Metrics, meterOf } from './metrics';
import type { UpgradeRejection } from './metrics';
import { Groups } from './groups';
import type { HelloJoin } from './groups';
import { Prepared } from './prepared';
import { Rounds } from './rounds';
import { Connection } from './socket';
import type { Socket } from './socket';
import type { SocketConfig, SocketHost } from './socket';
import { Subscriptions } from './subscriptions';
import type { SubscriptionRoute } from './subscriptions';
import { Tunnel } from './tunnel';

const counter = { min: 10000, max: 99999 };
const invalidUser = 'Invalid user: must be a non-empty string or a number';
const defaultHelloTimeout = 5000;                        // without auth settings

// A message that cannot be serialised (a cycle, a BigInt) fails the publish or broadcast with a rejection, whatever
// the broker, never with a synchronous throw.
const rejectThrown = (send: () => Promise<void>): Promise<void> => {

    try {
        return send();
    }
    catch (err) {
        return Promise.reject(err);
    }
};
const ping = new Prepared(encode({ type: 'ping' }));

const destroyOnError = function (this: Duplex): void {

    this.destroy();
};


export class Listener implements SocketHost {

    readonly sockets = new Map<string, Connection>();
    readonly byUser = new Map<string, Set<Connection>>();
    readonly subscriptions: Subscriptions;
    readonly config: SocketConfig;
    readonly authenticator: Auth.Authenticator<Connection>;
    readonly tunnel: Tunnel;
    readonly deflater: Deflater | null;                    // shared by every socket that negotiated compression
    metrics: Metrics | null = null;                      // with the inspector, or once an OpenTelemetry SDK reads it
    readonly groups: Groups;

    private readonly wss: WebSocketServer;
    private stopped = true;
    private brokerUp = false;                              // from broker.start() to broker.stop(): publishes go through
    private started = false;
    private pendingUpgrades = 0;
    private socketCounter = 0;                             // ids cycle through counter.min..counter.max
    readonly deadlines = new Deadlines<Connection>({ fire: (socket) => socket.expiryDue() });   // credential expiry
    private readonly beats: Rounds<Connection> | null = null;           // heartbeat pings, and their timeout checks
    private readonly verifies: Rounds<Connection> | null = null;        // credential re-checks of authenticated sockets
    private readonly onUpgradeEvent = (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head);

    constructor(readonly server: Server, readonly settings: Settings, readonly broker: Broker) {

        this.config = {
            helloTimeout: settings.auth ? settings.auth.timeout : defaultHelloTimeout,
            heartbeat: settings.heartbeat ? { interval: settings.heartbeat.interval, timeout: settings.heartbeat.timeout } : false,
            maxChunkChars: settings.payload.maxChunkChars,
            closeTimeout: settings.closeTimeout,
            limits: settings.limits,
            protocolLimits: { ...defaultLimits, maxPathLength: settings.limits.maxPathLength, maxSubscriptions: settings.limits.maxSubscriptions },
            onConnection: settings.onConnection,
            onMessage: settings.onMessage
        };

        // Each socket is pinged (and re-checked) once per interval at its own phase, a slice of sockets at a time,
        // so that thousands of them never hold the event loop in one pass.
        const heartbeat = this.config.heartbeat;
        if (heartbeat) {
            this.beats = new Rounds<Connection>({
                interval: heartbeat.interval,
                slot: 'beatSlot',
                visit: (socket) => {

                    socket.awaitingPong = true;
                    socket.sendPrepared(ping);
                },
                followUp: {
                    after: heartbeat.timeout,
                    visit: (socket) => {

                        if (socket.awaitingPong && !socket.inFlight) {
                            socket.close(CloseCode.heartbeatTimeout, 'Heartbeat timeout');
                        }
                    }
                }
            });
        }

        const verifyInterval = settings.auth ? settings.auth.minAuthVerifyInterval : false;
        if (verifyInterval) {
            this.verifies = new Rounds<Connection>({ interval: verifyInterval, slot: 'verifySlot', visit: (socket) => this.authenticator.recheck(socket) });
        }

        this.tunnel = new Tunnel(server, {
            endpoint: settings.auth ? settings.auth.endpoint : null,
            headers: settings.headers,
            tunnelHeaders: settings.tunnelHeaders,
            answered: (method, route, statusCode, ms) => this.metrics?.requested(method, route, statusCode, ms)
        });

        this.authenticator = new Auth.Authenticator(server, settings.auth, {
            count: (user) => this.byUser.get(user)?.size ?? 0,
            full: () => this.metrics?.limitHit('maxConnectionsPerUser'),
            rekey: (socket, indexed, apply) => this.rekey(socket, indexed, apply)
        }, this.tunnel);

        this.deflater = settings.compression ? new Deflater(settings.compression) : null;

        // maxPayload also bounds what ws inflates of a compressed message
        const perMessageDeflate = settings.compression ? negotiation() : false;
        this.wss = new WebSocketServer({ noServer: true, maxPayload: settings.limits.maxPayload, perMessageDeflate, clientTracking: false });
        this.subscriptions = new Subscriptions(server, {
            firstSubscriber: (path, history) => (history ? broker.subscribe(path, history) : broker.subscribe(path)),
            confirmed: (path) => broker.confirmed?.(path) ?? null,
            lastSubscriberGone: (path) => {

                broker.unsubscribe(path).catch((err) => server.log(['pulse', 'broker', 'error'], err));
            },
            presenceStore: broker.presence,
            nodeStats: () => this.nodeStats()
        });

        if (settings.inspector) {
            this.metrics = this.createMetrics();
        }

        this.groups = new Groups(this, broker.groups, !!(settings.auth && settings.auth.index));
        server.listener.on('upgrade', this.onUpgradeEvent);
    }

    // ---- Lifecycle ----

    async start(): Promise<void> {

        const meter = meterOf(this.settings.metrics);
        if (meter) {
            (this.metrics ??= this.createMetrics()).export(meter);
        }

        await this.broker.start({
            deliver: (envelope) => {

                if (this.stopped) {
                    return;                                    // its sockets are going away
                }

                if (this.metrics?.exporting) {
                    this.observeDelivery(this.metrics, envelope);
                }

                return this.subscriptions.deliver(envelope);
            },
            broadcast: (envelope) => this.deliverBroadcast(envelope),
            log: (tags, data) => this.server.log(['pulse', 'broker', ...tags], data as any),
            lost: (path) => this.resync(path),
            stats: () => this.nodeStats(),
            resendPresence: () => this.subscriptions.presence.resend(),
            reloadPresence: () => this.subscriptions.presence.reload(),
            membership: (command) => this.groups.apply(command),         // only sockets done with hello: none while stopping
            reloadGroups: () => this.groups.reload()
        });

        this.subscriptions.presence.start();
        this.stopped = false;
        this.brokerUp = this.started = true;
        this.beats?.start();
        this.verifies?.start();
    }

    async stop(): Promise<void> {

        this.stopped = true;
        this.groups.stop();
        this.beats?.stop();
        this.verifies?.stop();

        // Let tunnelled requests in flight finish (bounded), then send everyone elsewhere.
        const deadline = Date.now() + this.config.closeTimeout;
        while (Date.now() < deadline && [...this.sockets.values()].some((socket) => socket.inFlight)) {
            await new Promise((resolve) => setTimeout(resolve, 10));
        }

        await Promise.all([...this.sockets.values()].map((socket) => {

            socket.close(CloseCode.goingAway, 'Server stopping');
            return socket.disconnect();
        }));

        await this.subscriptions.presence.stop();              // the leaves of the sockets just closed
        this.brokerUp = false;
        await this.broker.stop();
        this.metrics?.close();
    }

    private createMetrics(): Metrics {

        const topics = this.subscriptions.topics;
        return new Metrics({
            connections: () => this.sockets.size,
            subscriptionsByRoute: () => {

                const counts = new Map<string, number>();
                for (const topic of topics.values()) {
                    counts.set(topic.route.pattern, (counts.get(topic.route.pattern) ?? 0) + topic.sockets.size);
                }

                return counts;
            },
            presenceByRoute: () => {

                const counts = new Map<string, number>();
                for (const topic of topics.values()) {
                    if (topic.route.presence) {
                        counts.set(topic.route.pattern, (counts.get(topic.route.pattern) ?? 0) + this.subscriptions.presence.localMembers(topic.path).members);
                    }
                }

                return counts;
            }
        }, this.settings.inspector ? this.settings.inspector.recentDisconnects : 0);
    }

    private observeDelivery(metrics: Metrics, envelope: PublishEnvelope): void {

        const topic = this.subscriptions.topics.get(envelope.path);
        if (topic) {
            const recipients = envelope.user === undefined ? topic.sockets.size : topic.byUser!.get(envelope.user)?.size ?? 0;      // targeting needs the index
            metrics.delivered(topic.route.pattern, recipients, envelope.at);
        }
    }

    // This node missed publishes of `path` that the broker cannot replay. Sockets that track positions are
    // sent to reconnect: their resume then says what can still be recovered, or that the app must refetch.
    // The others had no delivery guarantee to keep.
    private resync(path: string): void {

        for (const socket of this.subscriptions.topics.get(path)?.sockets ?? []) {
            if (socket.recovery) {
                socket.close(CloseCode.resync, 'Missed publishes: reconnect to recover');
            }
        }
    }

    // Registry sizes, read-only: for tests and ops dashboards (server.pulseStats()).
    stats(): { sockets: number; users: number; topics: number; subscriptions: number; pendingUpgrades: number } {

        let subscriptions = 0;
        for (const topic of this.subscriptions.topics.values()) {
            subscriptions += topic.sockets.size;
        }

        return { sockets: this.sockets.size, users: this.byUser.size, topics: this.subscriptions.topics.size, subscriptions, pendingUpgrades: this.pendingUpgrades };
    }

    // Open sockets and distinct authenticated users of this node (presence statistics).
    private nodeStats(): { sockets: number; users: number } {

        const users = new Set<string>();
        for (const socket of this.sockets.values()) {
            if (socket.user !== null) {
                users.add(socket.user);
            }
        }

        return { sockets: this.sockets.size, users: users.size };
    }

    // ---- Accepting connections ----

    private async upgrade(req: IncomingMessage, raw: Duplex, head: Buffer): Promise<void> {

        raw.on('error', destroyOnError);                       // shared: a closure here would keep req alive
        if (this.stopped) {
            return this.refuse(raw, 503, 'stopped');
        }

        if (this.settings.origin && !this.settings.origin.includes(req.headers.origin as string)) {
            return this.refuse(raw, 403, 'origin');
        }

        if (this.settings.maxConnections && this.sockets.size + this.pendingUpgrades >= this.settings.maxConnections) {
            this.metrics?.limitHit('maxConnections');
            return this.refuse(raw, 503, 'maxConnections');
        }

        ++this.pendingUpgrades;
        try {
            if (this.settings.onUpgrade) {
                let accepted: boolean;
                try {
                    accepted = await this.settings.onUpgrade(req);
                }
                catch (err) {
                    return this.refuse(raw, Boom.isBoom(err) ? err.output.statusCode : 500, 'failed');
                }

                if (!accepted) {
                    return this.refuse(raw, 403, 'refused');
                }

                if (this.stopped || raw.destroyed) {
                    return this.refuse(raw, 503, 'stopped');
                }
            }

            this.wss.handleUpgrade(req, raw, head, (ws) => this.add(ws, req));
        }
        finally {
            --this.pendingUpgrades;
        }
    }

    private refuse(raw: Duplex, statusCode: number, reason: UpgradeRejection): void {

        this.metrics?.upgradeRejected(reason);
        refuse(raw, statusCode);
    }

    private add(ws: WebSocket, req: IncomingMessage): void {

        const socket = new Connection(ws, req, this, this.generateId());
        this.sockets.set(socket.id, socket);
        this.beats?.add(socket);
    }

    async remove(socket: Connection): Promise<void> {

        this.sockets.delete(socket.id);
        this.beats?.delete(socket);
        this.verifies?.delete(socket);
        this.unindex(socket);
        socket.onClosed();
        if (this.metrics) {
            const at = Date.now();
            this.metrics.disconnected({ socket: socket.id, user: socket.user, code: socket.closeCode, reason: socket.closeReason, at, duration: at - socket.connectedAt });
        }

        await this.subscriptions.removeSocket(socket);
        const onDisconnection = this.settings.onDisconnection;
        if (onDisconnection) {
            // The handler may be async: a rejection is logged, never left unhandled.
            await Promise.resolve().then(() => onDisconnection(socket)).catch((err) => this.server.log(['pulse', 'onDisconnection', 'error'], err));
        }
    }

    private generateId(): string {

        const id = `${Date.now()}:${this.server.info.id}:${counter.min + this.socketCounter}`;
        this.socketCounter = (this.socketCounter + 1) % (counter.max - counter.min + 1);
        return id;
    }

    // ---- User index ----

    // A socket's credentials change (hello, reauth): it leaves its user's indexes (here and per topic) before,
    // and joins `indexed`'s after, and the credential re-checks, unless it closed while authenticating (remove()
    // ran).
    private rekey(socket: Connection, indexed: string | null, apply: () => void): void {

        this.subscriptions.reindex(socket, () => {

            this.unindex(socket);
            apply();
            if (this.sockets.get(socket.id) !== socket) {
                return;
            }

            this.verifies?.add(socket);                          // now authenticated: re-checked once per interval
            this.subscriptions.presence.userOn(socket);          // the cluster's users (presence statistics)
            if (indexed !== null) {
                let set = this.byUser.get(indexed);
                if (!set) {
                    set = new Set();
                    this.byUser.set(indexed, set);
                }

                set.add(socket);
            }
        });
    }

    private unindex(socket: Connection): void {

        this.subscriptions.presence.userOff(socket);
        const user = socket.user;
        const set = user === null ? undefined : this.byUser.get(user);
        if (set) {
            set.delete(socket);
            if (!set.size) {
                this.byUser.delete(user!);
            }
        }
    }

    // ---- Recovery ----

    // Where a history path stands, and what came after `since` (see catchup.ts).
    recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery> {

        const recovery = this.broker.recover(path, since, history);
        const metrics = this.metrics;
        if (!metrics || since === null) {
            return recovery;
        }

        const route = this.subscriptions.match(path)!.route.pattern;           // a history path has a route
        return recovery.then((result) => {

            metrics.recovered(route, result.recovered);
            return result;
        });
    }

    joinGroups(socket: Connection, positions: Record<string, Position> | undefined): Promise<HelloJoin> {

        return this.groups.hello(socket, positions);
    }

    // ---- Outbound ----

    // Sockets that gathered frames during this tick; each writes them once, on the next tick.
    private gathering: Connection[] = [];
    private readonly flushAll = () => {

        const sockets = this.gathering;
        this.gathering = [];
        for (const socket of sockets) {
            socket.flush();
        }
    };

    flushLater(socket: Connection): void {

        if (this.gathering.push(socket) === 1) {
            process.nextTick(this.flushAll);
        }
    }

    // While this node stops, publishes still reach the other nodes (its own sockets are closing). Several paths:
    // one broker message (publishMany); with `once`, a socket on several of them gets it on the first of those it
    // holds. Every path is looked up and checked first: a misuse on any of them rejects before anything is sent.
    publish(path: string | string[], message: unknown, options: { internal?: unknown; user?: string | number; once?: boolean } = {}): Promise<void> {

        if (options.user !== undefined && userKey(options.user) === null) {
            return Promise.reject(new Error(invalidUser));
        }

        if (!this.brokerUp) {
            return this.refused();
        }

        if (typeof path === 'string') {
            return this.publishOne(path, message, options);
        }

        // A path no subscription matches is dropped: nobody can hold it.
        const routed: { path: string; route: SubscriptionRoute }[] = [];
        for (const one of new Set(path)) {
            const match = this.subscriptions.topics.get(one) ?? this.subscriptions.match(one);
            if (match) {
                if (options.user !== undefined && !match.route.auth?.index) {
                    return Promise.reject(new Error('Subscription auth indexing is disabled'));
                }

                routed.push({ path: one, route: match.route });
            }
        }

        if (routed.length < 2) {
            return routed.length ? this.publishOne(routed[0]!.path, message, options) : Promise.resolve();
        }

        const once = options.once ? routed.map((item) => item.path) : undefined;
        const publishes = routed.map(({ path: one, route }) => ({ envelope: this.envelope(one, message, options, once), history: route.history ?? undefined }));
        const metrics = this.metrics?.exporting ? this.metrics : null;
        if (metrics) {
            const at = Date.now();
            publishes.forEach(({ envelope }) => (envelope.at = at));
        }

        const watched = publishes.filter((_, i) => routed[i]!.route.filter).map(({ envelope }) => this.subscriptions.watch(envelope));
        const started = performance.now();
        const broker = this.broker;
        const sent = rejectThrown(() => (broker.publishMany ? broker.publishMany(publishes) : Promise.all(publishes.map(({ envelope, history }) => broker.publish(envelope, history))).then(() => undefined)));
        return sent.then(() => {

            const failed = watched.find((watch) => watch.error !== undefined);
            if (failed) {
                throw failed.error;
            }

            if (metrics) {
                const ms = performance.now() - started;
                routed.forEach(({ route }) => metrics.published(route.pattern, ms));
            }
        });
    }

    private publishOne(path: string, message: unknown, options: { internal?: unknown; user?: string | number }): Promise<void> {

        // A path with local subscribers already knows its route; others go through the router.
        const match = this.subscriptions.topics.get(path) ?? this.subscriptions.match(path);
        if (!match) {
            return Promise.resolve();
        }

        if (options.user !== undefined && !match.route.auth?.index) {
            return Promise.reject(new Error('Subscription auth indexing is disabled'));
        }

        const envelope = this.envelope(path, message, options, undefined);
        if (this.metrics?.exporting) {
            return this.measuredPublish(this.metrics, envelope, match.route);
        }

        if (!match.route.filter) {
            return rejectThrown(() => this.broker.publish(envelope, match.route.history ?? undefined));
        }

        return this.watchedPublish(envelope, match.route);
    }

    private envelope(path: string, message: unknown, options: { internal?: unknown; user?: string | number }, once: string[] | undefined): PublishEnvelope {

        const envelope: PublishEnvelope = { path, message };
        if (options.internal !== undefined) {
            envelope.internal = options.internal;
        }

        if (options.user !== undefined) {
            envelope.user = userKey(options.user)!;
        }

        if (once) {
            envelope.once = once;
        }

        return envelope;
    }

    // With metrics exported: the envelope carries its publish time (for the delivery lag on every node), and the
    // broker's answer is timed.
    private measuredPublish(metrics: Metrics, envelope: PublishEnvelope, route: SubscriptionRoute): Promise<void> {

        envelope.at = Date.now();
        const started = performance.now();
        const publish = route.filter ? this.watchedPublish(envelope, route) : rejectThrown(() => this.broker.publish(envelope, route.history ?? undefined));
        return publish.then(() => metrics.published(route.pattern, performance.now() - started));
    }

    private watchedPublish(envelope: PublishEnvelope, route: SubscriptionRoute): Promise<void> {

        const watched = this.subscriptions.watch(envelope);
        return rejectThrown(() => this.broker.publish(envelope, route.history ?? undefined)).then(() => {

            if (watched.error !== undefined) {
                throw watched.error;
            }
        });
    }

    broadcast(message: unknown, options: { user?: string | number } = {}): Promise<void> {

        if (options.user !== undefined && userKey(options.user) === null) {
            throw new Error(invalidUser);
        }

        if (options.user !== undefined && !(this.settings.auth && this.settings.auth.index)) {
            throw new Error('Socket auth indexing is disabled');
        }

        if (!this.brokerUp) {
            return this.refused();
        }

        const envelope: BroadcastEnvelope = { message };
        if (options.user !== undefined) {
            envelope.user = userKey(options.user)!;
        }

        return rejectThrown(() => this.broker.broadcast(envelope));
    }

    // Before the first start nothing can be listening (as nes); once stopped, other nodes may be, and an
    // application must not take a publish that reached nobody for a delivered one.
    private refused(): Promise<void> {

        return this.started ? Promise.reject(Boom.serverUnavailable('Server stopped')) : Promise.resolve();
    }

    private deliverBroadcast(envelope: BroadcastEnvelope): void {

        if (this.stopped) {
            return;
        }

        const update = new Prepared(encode({ type: 'update', message: envelope.message }));
        const sockets = envelope.user === undefined ? this.sockets.values() : this.byUser.get(envelope.user)?.values() ?? [];
        for (const socket of sockets) {
            if (socket.ready) {                                  // not to sockets still in (or failing) hello
                socket.sendPrepared(update);
            }
        }
    }

    // Misuse throws at once, as in nes (which checks this synchronously)
    eachSocket(each: (socket: Socket) => unknown, options: { subscription?: string; user?: string | number } = {}): Promise<void> {

        if (this.stopped) {
            return Promise.resolve();
        }

        if (!options.subscription && options.user !== undefined) {
            throw new Error('Cannot specify user filter without a subscription path');
        }

        return this.visit(each, options);
    }

    private async visit(each: (socket: Socket) => unknown, options: { subscription?: string; user?: string | number }): Promise<void> {

        if (!options.subscription) {
            for (const socket of [...this.sockets.values()]) {
                await each(socket);
            }

            return;
        }

        const topic = this.subscriptions.topics.get(options.subscription);
        if (!topic) {
            return;
        }

        if (options.user !== undefined && !topic.route.auth?.index) {
            throw new Error('Subscription auth indexing is disabled');
        }

        for (const socket of [...topic.recipients(options.user === undefined ? undefined : String(options.user))]) {
            await each(socket);
        }
    }
}

const refuse = (socket: Duplex, statusCode: number): void => {

    if (!socket.writable) {
        socket.destroy();
        return;
    }

    const reason = Boom.boomify(new Error(), { statusCode }).output.payload.error;
    socket.once('finish', () => socket.destroy());
    socket.end(`HTTP/1.1 ${statusCode} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
};
