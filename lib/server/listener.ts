// Owns the WebSocket server: accepts upgrades (origin, limits, the application's hook), keeps the
// socket registry and user index, runs one heartbeat sweep for all sockets, and shuts down cleanly.

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

import * as Boom from '@hapi/boom';
import type { AuthArtifacts, Server } from '@hapi/hapi';
import { WebSocketServer } from 'ws';
import type { WebSocket } from 'ws';

import type { BroadcastEnvelope, Broker, PublishEnvelope, Recovery } from '../broker';
import type { Limits, Settings } from '../settings';
import { CloseCode, defaultLimits } from '../protocol';
import type { Limits as ProtocolLimits, MessageId, Position, TunnelRequest } from '../protocol';
import * as Auth from './auth';
import { Prepared } from './prepared';
import { Socket, isIdentityHeader } from './socket';
import { Subscriptions } from './subscriptions';

export interface Catchup {
    path: string;
    since: Position | undefined;
    recovery: Recovery;
}

const counter = { min: 10000, max: 99999 };
const invalidUser = 'Invalid user: must be a non-empty string or a number';
const verifyConcurrency = 64;                            // credential checks a sweep runs at once

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
const ping = new Prepared(JSON.stringify({ type: 'ping' }));

const destroyOnError = function (this: Duplex): void {

    this.destroy();
};


export class Listener {

    readonly sockets = new Map<string, Socket>();
    readonly byUser = new Map<string, Set<Socket>>();
    readonly subscriptions: Subscriptions;
    readonly protocolLimits: ProtocolLimits;
    readonly maxChunkChars: number | false;
    readonly heartbeat: false | { interval: number; timeout: number };
    readonly limits: Limits;
    readonly closeTimeout: number;

    private readonly wss: WebSocketServer;
    private readonly authRequired: (config: Auth.AuthSettings) => boolean;
    private stopped = true;
    private brokerUp = false;                              // from broker.start() to broker.stop(): publishes go through
    private started = false;
    private pendingUpgrades = 0;
    private socketCounter = 0;                             // ids cycle through counter.min..counter.max
    private beatTimer: NodeJS.Timeout | null = null;
    private checkTimer: NodeJS.Timeout | null = null;
    private verifyTimer: NodeJS.Timeout | null = null;
    private readonly onUpgradeEvent = (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head);

    constructor(readonly server: Server, readonly settings: Settings, readonly broker: Broker) {

        this.limits = settings.limits;
        this.protocolLimits = { ...defaultLimits, maxPathLength: settings.limits.maxPathLength, maxSubscriptions: settings.limits.maxSubscriptions };
        this.maxChunkChars = settings.payload.maxChunkChars;
        this.heartbeat = settings.heartbeat ? { interval: settings.heartbeat.interval, timeout: settings.heartbeat.timeout } : false;
        this.closeTimeout = settings.closeTimeout;

        this.wss = new WebSocketServer({ noServer: true, maxPayload: settings.limits.maxPayload, perMessageDeflate: false, clientTracking: false });
        this.subscriptions = new Subscriptions(server, {
            firstSubscriber: (path, history) => (history ? broker.subscribe(path, history) : broker.subscribe(path)),
            confirmed: (path) => broker.confirmed?.(path) ?? null,
            lastSubscriberGone: (path) => {

                broker.unsubscribe(path).catch((err) => server.log(['pulse', 'broker', 'error'], err));
            }
        });

        let required: boolean | null = null;
        this.authRequired = (config) => (required ??= Auth.isRequired(server, config));
        server.listener.on('upgrade', this.onUpgradeEvent);
    }

    // ---- Lifecycle ----

    async start(): Promise<void> {

        await this.broker.start({
            deliver: (envelope) => (this.stopped ? undefined : this.subscriptions.deliver(envelope)),   // its sockets are going away
            broadcast: (envelope) => this.deliverBroadcast(envelope),
            log: (tags, data) => this.server.log(['pulse', 'broker', ...tags], data as any),
            lost: (path) => this.resync(path)
        });

        this.stopped = false;
        this.brokerUp = this.started = true;
        this.scheduleBeat();
        this.scheduleVerify();
    }

    async stop(): Promise<void> {

        this.stopped = true;
        clearTimeout(this.beatTimer!);
        clearTimeout(this.checkTimer!);
        clearTimeout(this.verifyTimer!);

        // Let tunnelled requests in flight finish (bounded), then send everyone elsewhere.
        const deadline = Date.now() + this.closeTimeout;
        while (Date.now() < deadline && [...this.sockets.values()].some((socket) => socket.inFlight)) {
            await new Promise((resolve) => setTimeout(resolve, 10));
        }

        await Promise.all([...this.sockets.values()].map((socket) => {

            socket.close(CloseCode.goingAway, 'Server stopping');
            return socket.disconnect();
        }));

        this.brokerUp = false;
        await this.broker.stop();
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

    // ---- Accepting connections ----

    private async upgrade(req: IncomingMessage, raw: Duplex, head: Buffer): Promise<void> {

        raw.on('error', destroyOnError);                       // shared: a closure here would keep req alive
        if (this.stopped) {
            return refuse(raw, 503);
        }

        if (this.settings.origin && !this.settings.origin.includes(req.headers.origin as string)) {
            return refuse(raw, 403);
        }

        if (this.settings.maxConnections && this.sockets.size + this.pendingUpgrades >= this.settings.maxConnections) {
            return refuse(raw, 503);
        }

        ++this.pendingUpgrades;
        try {
            if (this.settings.onUpgrade) {
                let accepted: boolean;
                try {
                    accepted = await this.settings.onUpgrade(req);
                }
                catch (err) {
                    return refuse(raw, Boom.isBoom(err) ? err.output.statusCode : 500);
                }

                if (!accepted) {
                    return refuse(raw, 403);
                }

                if (this.stopped || raw.destroyed) {
                    return refuse(raw, 503);
                }
            }

            this.wss.handleUpgrade(req, raw, head, (ws) => this.add(ws, req));
        }
        finally {
            --this.pendingUpgrades;
        }
    }

    private add(ws: WebSocket, req: IncomingMessage): void {

        const socket = new Socket(ws, req, this, this.generateId());
        this.sockets.set(socket.id, socket);
    }

    async remove(socket: Socket): Promise<void> {

        this.sockets.delete(socket.id);
        this.unindex(socket);
        socket.onClosed();
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

    // ---- Authentication ----

    async authenticate(socket: Socket, auth: unknown, isReauth: boolean): Promise<void> {

        const config = this.settings.auth;
        if (!config) {
            if (auth !== undefined) {                          // the parser turns a null hello auth into none
                throw Boom.badRequest('Authentication is not enabled');
            }

            return;
        }

        let authenticated = isReauth ? null : await Auth.fromCookie(config, socket.upgradeHeaders.cookie);   // a reauth carries its credentials
        if (authenticated && auth !== undefined) {
            throw Boom.badRequest('Connection already authenticated');
        }

        if (auth !== undefined) {
            authenticated = await Auth.fromClient(this.server, config, auth, socket.info.remoteAddress, socket.info['x-forwarded-for']);
        }

        if (!authenticated) {
            if (isReauth) {                                    // a reauth always carries auth (the parser checks)
                throw Boom.unauthorized('Reauthentication yielded no credentials');
            }

            if (this.authRequired(config)) {                   // a hello: the socket has no credentials yet
                throw Boom.unauthorized('Connection requires authentication');
            }

            return;
        }

        this.setCredentials(socket, authenticated);
    }

    private setCredentials(socket: Socket, authenticated: Auth.Authenticated): void {

        const config = this.settings.auth as Auth.AuthSettings;
        const expiresAt = this.expiryOf(config, authenticated);
        if (expiresAt !== null && expiresAt <= Date.now()) {
            throw Boom.unauthorized('Credentials expired');
        }

        const user = userKey(authenticated.credentials.user);
        const indexed = config.index ? user : null;
        if (indexed !== null && indexed !== socket.user && config.maxConnectionsPerUser && (this.byUser.get(indexed)?.size ?? 0) >= config.maxConnectionsPerUser) {
            throw Boom.serverUnavailable('Too many connections for the authenticated user');
        }

        if (socket.auth.isAuthenticated && (user !== socket.user || authenticated.strategy !== socket.auth.strategy)) {
            ++socket.identityVersion;
        }

        ++socket.credentialsVersion;
        this.subscriptions.reindex(socket, () => {

            this.unindex(socket);
            socket.auth.isAuthenticated = true;
            socket.auth.credentials = authenticated.credentials;
            socket.auth.artifacts = authenticated.artifacts as AuthArtifacts | null;       // as the strategy returned them (nes types them so)
            socket.auth.strategy = authenticated.strategy;
            socket.user = user;
            if (indexed !== null && this.sockets.get(socket.id) === socket) {      // not if it closed while authenticating (remove() ran)
                let set = this.byUser.get(indexed);
                if (!set) {
                    set = new Set();
                    this.byUser.set(indexed, set);
                }

                set.add(socket);
            }
        });

        socket.verifiedAt = Date.now();
        socket.expireAt(expiresAt, config.expiryNotice);
    }

    // The earlier of the sealed token / cookie ttl and auth.expiry(credentials) (default: credentials.expiresAt).
    private expiryOf(config: Auth.AuthSettings, authenticated: Auth.Authenticated): number | null {

        const candidates = [authenticated.expiresAt, config.expiry ? config.expiry(authenticated.credentials) : authenticated.credentials.expiresAt];
        const times = candidates.filter((value): value is number => typeof value === 'number' && Number.isFinite(value));
        return times.length ? Math.min(...times) : null;
    }

    private unindex(socket: Socket): void {

        const user = socket.user;
        const set = user === null ? undefined : this.byUser.get(user);
        if (set) {
            set.delete(socket);
            if (!set.size) {
                this.byUser.delete(user!);
            }
        }
    }

    // Re-checks credentials with the auth strategy (server.auth.verify) once per minAuthVerifyInterval.
    // Resolves false when they no longer verify (or the strategy did not answer within verifyTimeout); the
    // caller tells the client and closes. Every message that arrives while a check is pending waits for it.
    // The sweep forces it: credentials that stop verifying are caught within one interval, not two.
    // Synchronous `true` when no check is due, so that most messages pay no await for it.
    verify(socket: Socket, force = false): true | Promise<boolean> {

        const interval = this.settings.auth ? this.settings.auth.minAuthVerifyInterval : false;
        if (!interval || !socket.auth.isAuthenticated) {
            return true;
        }

        if (socket.verifying) {
            return socket.verifying;
        }

        if (!force && Date.now() - socket.verifiedAt < interval) {
            return true;
        }

        const credentials = socket.auth.credentials;
        const check = this.verifyWithin(socket, (this.settings.auth as Auth.AuthSettings).verifyTimeout).then((verified) => {

            socket.verifying = null;
            if (socket.auth.credentials !== credentials) {
                return true;                                   // replaced meanwhile by a reauth that was already under way
            }

            if (verified) {
                socket.verifiedAt = Date.now();
            }

            return verified;
        });

        socket.verifying = check;
        return check;
    }

    private verifyWithin(socket: Socket, timeout: number): Promise<boolean> {

        let timer: NodeJS.Timeout;
        const expired = new Promise<boolean>((resolve) => {

            timer = setTimeout(() => resolve(false), timeout);
        });

        const verified = this.server.auth.verify(socket as any).then(() => true, () => false);
        return Promise.race([verified, expired]).finally(() => clearTimeout(timer));
    }

    private scheduleVerify(): void {

        const interval = this.settings.auth ? this.settings.auth.minAuthVerifyInterval : false;
        if (!interval) {
            return;
        }

        // Every interval, whatever the previous sweep still waits on: a slow check delays no other socket's.
        this.verifyTimer = setTimeout(() => {

            this.scheduleVerify();
            void this.sweepCredentials();                      // never rejects: verify() settles to a boolean
        }, interval);
    }

    // Every socket, at most verifyConcurrency checks at a time: a slow strategy delays revocation by one
    // verify latency, not by one per socket.
    private async sweepCredentials(): Promise<void> {

        const sockets = [...this.sockets.values()];
        let next = 0;
        const worker = async (): Promise<void> => {

            while (next < sockets.length) {
                const socket = sockets[next++]!;
                const verified = this.verify(socket, true);
                if (verified !== true && !await verified) {
                    socket.close(CloseCode.authExpired, 'Credential verification failed');
                }
            }
        };

        await Promise.all(Array.from({ length: Math.min(verifyConcurrency, sockets.length) }, worker));
    }

    // The hello reply's extension block: what was accepted, and per history path where the socket stands.
    acknowledge(socket: Socket, catchups: Catchup[]): Record<string, unknown> {

        const pulse: Record<string, unknown> = { recovery: socket.recovery, expiry: socket.expiry };
        if (socket.recovery && catchups.length) {
            const positions: Record<string, Position> = {};
            const recovered: Record<string, boolean> = {};
            for (const catchup of catchups) {
                positions[catchup.path] = catchup.recovery.position;
                if (catchup.since) {
                    recovered[catchup.path] = catchup.recovery.recovered;
                }
            }

            pulse.positions = positions;
            pulse.recovered = recovered;
        }

        if (socket.expiry && socket.expiresAt !== null) {
            pulse.expiresAt = socket.expiresAt;
        }

        return pulse;
    }

    // ---- Recovery ----

    // Subscribes; on a history path also holds live pubs and reads where the path stands: the socket's floor, so
    // that it never receives a publish older than its subscription (a broker healing a gap delivers late), and
    // for a recovery socket what it missed.
    async subscribeFor(socket: Socket, path: string, since: Position | undefined): Promise<Catchup | null> {

        // Already subscribed (or catching up): a repeated sub changes nothing, and replays nothing.
        const history = !socket.subscriptions.has(path) ? this.subscriptions.history(path) : null;
        if (!history) {
            await this.subscriptions.subscribe(socket, path);
            return null;
        }

        socket.hold(path);
        try {
            await this.subscriptions.subscribe(socket, path);
            // What is held with an offset up to the position read was published before the reply (a broker healing
            // a gap delivers old publishes late): the socket starts after it.
            const recovery = await this.broker.recover(path, socket.recovery ? since ?? null : null, history);
            return { path, since, recovery };
        }
        catch (err) {
            // A failed sub leaves nothing behind: a repeated one is handled like a first one.
            socket.release(path, null);
            await this.subscriptions.unsubscribe(socket, path);
            throw err;
        }
    }

    // After the reply: missed publishes in order, then the live ones held meanwhile, none twice.
    async catchUp(socket: Socket, catchups: Catchup[]): Promise<void> {

        for (const { path, since, recovery } of catchups) {
            const topic = socket.subscriptions.get(path);
            if (topic && since && recovery.recovered) {
                await this.subscriptions.replay(socket, topic, recovery.entries);
            }

            // Unsubscribed (or revoked) meanwhile: what was held is dropped.
            socket.release(path, socket.subscriptions.get(path) === topic && topic ? recovery.position : null);
        }
    }

    // ---- Heartbeat: one sweep for every socket ----

    private scheduleBeat(): void {

        const heartbeat = this.heartbeat;
        if (!heartbeat) {
            return;
        }

        this.beatTimer = setTimeout(() => {

            for (const socket of this.sockets.values()) {
                socket.awaitingPong = true;
                socket.sendPrepared(ping);
            }

            this.checkTimer = setTimeout(() => {

                for (const socket of this.sockets.values()) {
                    if (socket.awaitingPong && !socket.inFlight) {
                        socket.close(CloseCode.heartbeatTimeout, 'Heartbeat timeout');
                    }
                }
            }, heartbeat.timeout);

            this.scheduleBeat();
        }, heartbeat.interval);
    }

    // ---- Outbound ----

    // Sockets that gathered frames during this tick; each writes them once, on the next tick.
    private gathering: Socket[] = [];
    private readonly flushAll = () => {

        const sockets = this.gathering;
        this.gathering = [];
        for (const socket of sockets) {
            socket.flush();
        }
    };

    flushLater(socket: Socket): void {

        if (this.gathering.push(socket) === 1) {
            process.nextTick(this.flushAll);
        }
    }

    // While this node stops, publishes still reach the other nodes (its own sockets are closing).
    publish(path: string, message: unknown, options: { internal?: unknown; user?: string | number } = {}): Promise<void> {

        if (options.user !== undefined && userKey(options.user) === null) {
            return Promise.reject(new Error(invalidUser));
        }

        if (!this.brokerUp) {
            return this.refused();
        }

        // A path with local subscribers already knows its route; others go through the router.
        const match = this.subscriptions.topics.get(path) ?? this.subscriptions.match(path);
        if (!match) {
            return Promise.resolve();
        }

        if (options.user !== undefined && !match.route.auth?.index) {
            return Promise.reject(new Error('Subscription auth indexing is disabled'));
        }

        const envelope: PublishEnvelope = { path, message };
        if (options.internal !== undefined) {
            envelope.internal = options.internal;
        }

        if (options.user !== undefined) {
            envelope.user = userKey(options.user)!;
        }

        if (!match.route.filter) {
            return rejectThrown(() => this.broker.publish(envelope, match.route.history ?? undefined));
        }

        const watched = this.subscriptions.watch(envelope);
        return rejectThrown(() => this.broker.publish(envelope, match.route.history ?? undefined)).then(() => {

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

        const update = new Prepared(JSON.stringify({ type: 'update', message: envelope.message }));
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

    // ---- Tunnelled requests ----

    async inject(socket: Socket, request: TunnelRequest): Promise<string> {

        let { method, path } = request;
        if (request.headers && Object.keys(request.headers).some((name) => name.toLowerCase() === 'authorization')) {
            throw Boom.badRequest('Cannot include an Authorization header');
        }

        if (path[0] !== '/') {                                       // route id
            const route = this.server.lookup(path);
            if (!route) {
                throw Boom.notFound();
            }

            if (route.method === '*') {
                throw Boom.badRequest('Cannot use route id with wildcard method route config');
            }

            path = route.path;
            method = route.method;
        }

        if (this.settings.auth && path.split('?')[0] === this.settings.auth.endpoint) {
            throw Boom.notFound();
        }

        let res: Awaited<ReturnType<Server['inject']>>;
        try {
            res = await this.server.inject({
                method,
                url: path,
                payload: request.payload as any,
                headers: this.tunnelHeaders(socket, request.headers),
                auth: socket.auth.isAuthenticated ? { credentials: socket.auth.credentials as any, artifacts: socket.auth.artifacts as any, strategy: socket.auth.strategy! } : undefined,
                validate: false,
                plugins: { nes: { socket } },
                remoteAddress: socket.info.remoteAddress
            });
        }
        catch {
            // Handler failures come back as 500 responses; a rejection means the request itself could not be
            // built (a payload nested too deeply to encode, an unusable url): the client's fault.
            throw Boom.badRequest('Invalid request');
        }

        return this.encodeResponse(request.id, res.statusCode, res.result, res.headers);
    }

    // What identifies the connection (host, forwarded addresses, cookies) comes from the upgrade request;
    // the message may set such a header only where the application allows it (tunnelHeaders). Framing
    // headers (content-length, transfer-encoding) are shot's to compute.
    private tunnelHeaders(socket: Socket, given: Record<string, string> | undefined): Record<string, string> {

        const headers: Record<string, string> = { ...socket.upgradeHeaders };
        for (const name in given) {
            const lower = name.toLowerCase();
            if (!isConnectionHeader(lower) || this.settings.tunnelHeaders.includes(lower)) {
                headers[lower] = given[name]!;
            }
        }

        return headers;
    }

    private encodeResponse(id: MessageId, statusCode: number, result: unknown, headers: Record<string, unknown>): string {

        const filtered = this.filterHeaders(headers);
        // A handler that already returned JSON text is sent as is, not encoded twice (as nes does).
        // hapi always sets a string content-type on a string result.
        if (typeof result === 'string' && String(headers['content-type']).startsWith('application/json')) {
            const head = JSON.stringify({ type: 'request', id, statusCode });
            return head.slice(0, -1) + ',"payload":' + result + (filtered ? ',"headers":' + JSON.stringify(filtered) : '') + '}';
        }

        try {
            return JSON.stringify({ type: 'request', id, statusCode, payload: result, headers: filtered });
        }
        catch {
            this.server.log(['pulse', 'serialization', 'error'], 'request');
            throw Boom.internal('Failed serializing message');
        }
    }

    filterHeaders(headers: Record<string, unknown>): Record<string, unknown> | undefined {

        const filter = this.settings.headers;
        if (!filter) {
            return undefined;
        }

        if (filter === '*') {
            return headers;
        }

        const filtered: Record<string, unknown> = {};
        for (const name of Object.keys(headers)) {
            if (filter.includes(name.toLowerCase())) {
                filtered[name] = headers[name];
            }
        }

        return filtered;
    }
}

// The key a user is indexed and targeted under: as in nes, any truthy user, so 42 and '42' are one user
// (and the same on every node, where envelopes carry it as a string).
export const userKey = (user: unknown): string | null => {

    if (typeof user === 'string') {
        return user || null;
    }

    return typeof user === 'number' && user !== 0 && Number.isFinite(user) ? String(user) : null;
};

const framingHeaders = new Set(['content-length', 'transfer-encoding', 'connection', 'upgrade', 'keep-alive', 'te', 'trailer', 'expect']);

const isConnectionHeader = (name: string): boolean => isIdentityHeader(name) || framingHeaders.has(name);

const refuse = (socket: Duplex, statusCode: number): void => {

    if (!socket.writable) {
        socket.destroy();
        return;
    }

    const reason = Boom.boomify(new Error(), { statusCode }).output.payload.error;
    socket.once('finish', () => socket.destroy());
    socket.end(`HTTP/1.1 ${statusCode} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
};
