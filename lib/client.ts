// hapi-pulse client: speaks nes protocol v2 over a WebSocket, in browsers (native WebSocket) and in Node (ws).
// It is API compatible with the @hapi/nes 14 client; the differences are documented next to the code that has them.
// Only ./protocol may be imported here: the browser bundle is built from this file alone.

import type { ClientOptions as WsOptions } from 'ws';

import { ChunkAssembler, CloseCode, clientMessage, presencePath, transientStatus, validateServerMessage } from './protocol';
import type { ErrorFields, HelloRequest, HelloResponse, JoinMessage, MessageId, Position, PresenceMessage, PubMessage, RevokeMessage, ServerMessage, ServerResponse, Unnumbered } from './protocol';

export type { Position, PresenceDiff, PresenceList, PresenceMember, PresenceMessage } from './protocol';


// ---- Public types ----

export type ErrorType = 'timeout' | 'disconnect' | 'server' | 'protocol' | 'ws' | 'user';

export type ClientAuth = string | { headers?: Record<string, string>; payload?: unknown; [key: string]: unknown };

// Fresh credentials on demand: called for every (re)connection's hello and, on hapi-pulse servers, shortly before
// the credentials expire (see ConnectOptions.auth). null or undefined means no credentials.
export type ClientAuthProvider = () => ClientAuth | null | undefined | Promise<ClientAuth | null | undefined>;

export interface ClientOptions {

    // Passed to the ws constructor (Node only). maxPayload defaults to 16 MiB instead of ws's 100 MiB.
    ws?: WsOptions;

    // Per request timeout in milliseconds (false: none, the default).
    timeout?: number | false;

    // Upper bound, in characters, of one server message after chunk reassembly. Defaults to 64 Mi.
    maxMessageChars?: number;

    // Missed-message recovery (hapi-pulse extension, protocol.md §8.2). The client remembers the position of the
    // last publication it received on each subscribed path that keeps history, and a reconnection asks the server
    // for what was missed. When that is no longer possible, the path's handlers are called once with
    // (undefined, { recovered: false }). Stock nes servers ignore the request. Default false.
    recovery?: boolean;
}

export interface ConnectOptions {

    // Credentials, or a function returning them (possibly asynchronously). A function is called for the hello of
    // every connection and reconnection, and also opts in to the expiry extension (protocol.md §8.3): when the
    // server warns that the credentials are about to expire, the function is called again and its result is
    // sent with a reauth, keeping the socket and its subscriptions. A function that throws or rejects fails that
    // connection attempt (retried as a network failure would be).
    auth?: ClientAuth | ClientAuthProvider;
    reconnect?: boolean;                // default true
    delay?: number;                     // first reconnection delay in ms, doubled on each failed attempt (default 1000)
    maxDelay?: number;                  // cap on the reconnection delay (default 5000)
    retries?: number;                   // consecutive failed attempts allowed (default Infinity)
    timeout?: number;                   // time allowed to open the socket, in ms
    jitter?: number;                    // share of each delay that is randomised, 0..1 (default 0.5)
}

export interface RequestOptions {
    path: string;
    method?: string;
    headers?: Record<string, string>;
    payload?: unknown;
}

export interface RequestResponse<T = any> {
    payload: T;
    statusCode: number;
    headers: Record<string, string>;
}

export interface MessageResponse<T = any> {
    payload: T;
}

export interface SubscriptionFlags {

    // The server revoked the subscription: this is the last call (message is the revocation message, if any).
    revoked?: boolean;

    // Recovery only: the publications missed while disconnected could not be replayed (history trimmed or
    // expired, or the broker restarted). The handler is called once with message undefined; the application
    // should fetch the current state (with a request, for example). Later publications arrive as usual.
    recovered?: false;

    // Handlers given to joined() only: the server-side subscription's path and the pattern's parameters, and
    // `joined` on the call that announces a new one (message undefined).
    path?: string;
    params?: Record<string, string>;
    joined?: true;
}

export type SubscriptionHandler<T = unknown> = (message: T, flags: SubscriptionFlags) => void;

export interface DisconnectLog {
    code: number;
    explanation: string;
    reason: string;
    wasClean: boolean;
    willReconnect: boolean;
    wasRequested: boolean;
}

// The subset of the WebSocket interface used here; both the DOM WebSocket and ws provide it.
export interface WebSocketLike {
    readonly readyState: number;
    onopen: ((event: unknown) => void) | null;
    onclose: ((event: { code?: number; reason?: string; wasClean?: boolean }) => void) | null;
    onerror: ((event: unknown) => void) | null;
    onmessage: ((event: { data: unknown }) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, options?: WsOptions) => WebSocketLike;


export class PulseError extends Error {

    readonly type: ErrorType;
    readonly isNes = true;
    readonly isPulse = true;
    statusCode?: number;
    data?: any;
    headers?: Record<string, string>;
    path?: string;

    constructor(message: string, type: ErrorType, cause?: unknown) {

        super(message, cause === undefined ? undefined : { cause });
        this.name = 'PulseError';
        this.type = type;
    }
}

// Kept for code written against @hapi/nes types
export type NesError = PulseError;


// ---- Internals ----

const OPEN = 1;
const CONNECTING = 0;

const ignore = () => { };

const explanations: Record<number, string> = {
    1000: 'Normal closure',
    1001: 'Going away',
    1002: 'Protocol error',
    1003: 'Unsupported data',
    1004: 'Reserved',
    1005: 'No status received',
    1006: 'Abnormal closure',
    1007: 'Invalid frame payload data',
    1008: 'Policy violation',
    1009: 'Message too big',
    1010: 'Mandatory extension',
    1011: 'Internal server error',
    1013: 'Try again later',
    1015: 'TLS handshake'
};

interface Pending {
    resolve: (value: any) => void;
    reject: (err: PulseError) => void;
    timer: ReturnType<typeof setTimeout> | null;
}

interface Reconnection {
    delay: number;
    maxDelay: number;
    retries: number;
    jitter: number;
    attempts: number;               // failed attempts since the last successful hello
    settings: ConnectionSettings;
}

interface ConnectionSettings {
    auth?: ClientAuth | ClientAuthProvider;
    timeout?: number;
}

type Done = (err?: PulseError) => void;

const toError = (err: unknown, type: ErrorType): PulseError => {

    return new PulseError(err instanceof Error ? err.message : String(err), type, err);
};

// In Node the ws module is used so that options (headers, agents, maxPayload) can be passed; everywhere else the
// platform WebSocket. ws is required lazily so that importing this module never loads it, and the browser bundle
// marks it external and never reaches the require.
const platformWebSocket = (): { WebSocket: WebSocketConstructor; node: boolean } => {

    // $lab:coverage:off$
    if (typeof process === 'object' && process !== null && process.versions?.node) {
        return { WebSocket: require('ws'), node: true };
    }

    const WebSocket = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocket) {
        throw new Error('No WebSocket implementation available');
    }

    return { WebSocket, node: false };
    // $lab:coverage:on$
};


// The members of a path with presence, kept up to date by followPresence(): the list, then the diffs applied
// to it. `synced` is false from a disconnection until the list the server sends after the resubscription.
export interface PresenceFollower<Info = unknown> {
    readonly path: string;
    readonly members: ReadonlyMap<string, Info>;         // member id -> info
    readonly anonymous: number;
    readonly synced: boolean;
    stop(): Promise<void>;
}

type PresenceListener<Info> = (follower: PresenceFollower<Info>, message: PresenceMessage<Info> | null) => void;

class PresenceTracker<Info> implements PresenceFollower<Info> {

    members = new Map<string, Info>();
    anonymous = 0;
    synced = false;
    readonly handler: SubscriptionHandler<PresenceMessage<Info>>;

    constructor(readonly path: string, private readonly client: Client, private readonly trackers: Set<PresenceTracker<any>>, private readonly onChange: PresenceListener<Info> | undefined) {

        this.handler = (message, flags) => {

            if (flags.revoked) {
                this.trackers.delete(this);
                this.synced = false;
                this.onChange?.(this, null);
                return;
            }

            if (message.presence === 'list') {
                this.members = new Map(message.members.map((member) => [member.id, member.info]));
                this.synced = true;
            }
            else {
                for (const member of [...message.joins, ...message.updates]) {
                    this.members.set(member.id, member.info);
                }

                for (const id of message.leaves) {
                    this.members.delete(id);
                }
            }

            this.anonymous = message.anonymous;
            this.onChange?.(this, message);
        };
    }

    stop(): Promise<void> {

        this.trackers.delete(this);
        return this.client.unsubscribe(presencePath(this.path), this.handler);
    }
}

// Recovery: the position of the last publication seen on each subscribed path, sent with the next hello so that
// the server replays what was missed. A position lives and dies with its subscription (Client._drop).
class Positions {

    private readonly byPath = new Map<string, Position>();

    // The server's word (a sub or hello reply) replaces what was kept
    adopt(path: string, position: Position): void {

        this.byPath.set(path, position);
    }

    // A publication moves it forward within an epoch; one of another epoch replaces it
    advance(path: string, position: Position): void {

        const current = this.byPath.get(path);
        if (!current || current.epoch !== position.epoch || current.offset < position.offset) {
            this.byPath.set(path, position);
        }
    }

    forget(path: string): void {

        this.byPath.delete(path);
    }

    // The positions of `paths` that have one, or undefined when none has
    of(paths: string[]): Record<string, Position> | undefined {

        let positions: Record<string, Position> | undefined;
        for (const path of paths) {
            const position = this.byPath.get(path);
            if (position) {
                (positions ??= {})[path] = position;
            }
        }

        return positions;
    }
}

// '/room/{id}' against '/room/7': { id: '7' }; null when the path does not match.
const matchSegments = (pattern: string[], segments: string[]): Record<string, string> | null => {

    if (pattern.length !== segments.length) {
        return null;
    }

    const params: Record<string, string> = {};
    for (let i = 0; i < pattern.length; ++i) {
        const expected = pattern[i]!;
        const actual = segments[i]!;
        const param = /^{(\w+)}$/.exec(expected);
        if (param) {
            params[param[1]!] = actual;
        }
        else if (expected !== actual) {
            return null;
        }
    }

    return params;
};

export class Client {

    // Overrides the WebSocket implementation (must accept (url, options) when `ws` options are used).
    static WebSocket: WebSocketConstructor | null = null;

    id: string | null = null;

    onError: (err: PulseError) => void = (err) => console.error(err);
    onConnect: () => void = ignore;
    onDisconnect: (willReconnect: boolean, log: DisconnectLog) => void = ignore;
    onHeartbeatTimeout: (willReconnect: boolean) => void = ignore;
    onUpdate: (message: unknown) => void = ignore;

    // The server warned that the connection's credentials expire at `expiresAt` (ms since epoch) and will close
    // the socket then (4002) unless they are renewed. Assigning a handler (before connect()) opts in to the expiry
    // extension. With a static auth the application renews them with reauthenticate(); with an auth function the
    // client already does, and this is only a notification.
    onExpiring: (expiresAt: number) => void = ignore;

    private readonly _url: string;
    private readonly _settings: ClientOptions;
    private readonly _assembler: ChunkAssembler;
    private readonly _maxChars: number;

    private _ws: WebSocketLike | null = null;
    private _ready = false;                 // hello answered on the current socket
    private _discarding = false;            // skipping the rest of an oversized chunked message
    private _reconnection: Reconnection | null = null;
    private _reconnectionTimer: ReturnType<typeof setTimeout> | null = null;
    private _ids = 0;
    private _requests = new Map<MessageId, Pending>();
    private _subscriptions = new Map<string, SubscriptionHandler<any>[]>();
    private _heartbeatMs: number | false = false;
    private _heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
    private _disconnectListeners: (() => void)[] | null = null;
    private _disconnectRequested = false;
    private _active: ConnectionSettings | null = null;          // settings of the current connection (its auth)
    private readonly _positions = new Positions();
    private _presence = new Set<PresenceTracker<any>>();
    private _subRetries = new Map<string, { timer: ReturnType<typeof setTimeout>; cancel: (reason?: PulseError) => void }>();   // subs waiting to be sent again
    private _joinHandlers: { pattern: string; segments: string[]; handler: SubscriptionHandler<any> }[] = [];
    private _joined = new Set<string>();                        // server-side subscriptions of this connection

    constructor(url: string, options: ClientOptions = {}) {

        this._url = url;
        this._settings = options;
        this._maxChars = options.maxMessageChars ?? 64 * 1024 * 1024;
        this._assembler = new ChunkAssembler(this._maxChars);
    }

    // ---- Connection ----

    connect(options: ConnectOptions = {}): Promise<void> {

        // In this order, as nes: a connected client that reconnects on loss gets the first message
        if (this._reconnection) {
            return Promise.reject(new PulseError('Cannot connect while client attempts to reconnect', 'user'));
        }

        if (this._ws) {
            return Promise.reject(new PulseError('Already connected', 'user'));
        }

        const settings = { auth: options.auth, timeout: options.timeout };
        if (options.reconnect !== false) {
            this._reconnection = {
                delay: options.delay || 1000,
                maxDelay: options.maxDelay || 5000,
                retries: options.retries ?? Infinity,           // nes treats 0 as Infinity; here 0 means no retry
                jitter: Math.min(Math.max(options.jitter ?? 0.5, 0), 1),
                attempts: 0,
                settings
            };
        }

        return new Promise((resolve, reject) => {

            this._connect(settings, true, (err) => (err ? reject(err) : resolve()));
        });
    }

    disconnect(): Promise<void> {

        return new Promise((resolve) => this._disconnect(resolve, false));
    }

    overrideReconnectionAuth(auth: ClientAuth | ClientAuthProvider): boolean {

        if (!this._reconnection) {
            return false;
        }

        this._reconnection.settings.auth = auth;
        return true;
    }

    // As nes, this also replaces the reconnection auth (an auth function included).
    reauthenticate(auth: ClientAuth): Promise<true> {

        this.overrideReconnectionAuth(auth);
        return this._send(clientMessage.reauth(auth));
    }

    // ---- Requests ----

    request<T = any>(options: string | RequestOptions): Promise<RequestResponse<T>> {

        if (typeof options === 'string') {
            options = { path: options };
        }

        return this._send(clientMessage.request(options.method || 'GET', options.path, options.headers, options.payload));
    }

    message<T = any>(message: unknown): Promise<MessageResponse<T>> {

        return this._send(clientMessage.message(message));
    }

    // ---- Subscriptions ----

    subscriptions(): string[] {

        return [...this._subscriptions.keys()];
    }

    subscribe<T = unknown>(path: string, handler: SubscriptionHandler<T>): Promise<void> {

        if (!path || path[0] !== '/' || typeof handler !== 'function') {
            return Promise.reject(new PulseError(typeof handler !== 'function' ? 'Invalid handler' : 'Invalid path', 'user'));
        }

        const handlers = this._subscriptions.get(path);
        if (handlers) {
            if (!handlers.includes(handler)) {
                handlers.push(handler);
            }

            return Promise.resolve();
        }

        this._subscriptions.set(path, [handler]);
        if (!this._isReady()) {
            return Promise.resolve();           // Sent with the next hello, or right after the current one
        }

        return this._sub(path);
    }

    // Follows the members of `path` (a path of a subscription declared with presence): subscribes to its presence
    // path and keeps the member list; onChange runs after each list or diff (message null: revoked).
    async followPresence<Info = unknown>(path: string, onChange?: PresenceListener<Info>): Promise<PresenceFollower<Info>> {

        const tracker = new PresenceTracker<Info>(path, this, this._presence, onChange);
        await this.subscribe(presencePath(path), tracker.handler);
        this._presence.add(tracker);
        return tracker;
    }

    // Server-side subscriptions (hapi-pulse groups extension, protocol.md §8.4): `handler` gets the publications
    // of every path the server subscribed this client to and that matches `pattern` ('/room/{id}': a `{name}`
    // segment matches any one segment), the announcement of each new one (flags.joined) and its end
    // (flags.revoked). The first pattern registered that matches wins. Registering one (before connect()) opts
    // in; a stock nes server ignores the request.
    joined<T = unknown>(pattern: string, handler: SubscriptionHandler<T>): void {

        if (typeof pattern !== 'string' || pattern[0] !== '/' || typeof handler !== 'function') {
            throw new PulseError(typeof handler !== 'function' ? 'Invalid handler' : 'Invalid pattern', 'user');
        }

        this._joinHandlers.push({ pattern, segments: pattern.split('/'), handler });
    }

    // The paths the server subscribed this connection to (as of the last hello and join or revoke since).
    joinedPaths(): string[] {

        return [...this._joined];
    }

    unsubscribe(path: string, handler?: SubscriptionHandler<any> | null): Promise<void> {

        if (!path || path[0] !== '/') {
            return Promise.reject(new PulseError('Invalid path', 'user'));
        }

        const handlers = this._subscriptions.get(path);
        if (!handlers) {
            return Promise.resolve();
        }

        if (handler) {
            const pos = handlers.indexOf(handler);
            if (pos === -1) {
                return Promise.resolve();
            }

            handlers.splice(pos, 1);
            if (handlers.length) {
                return Promise.resolve();
            }
        }

        this._drop(path);
        if (!this._isReady()) {
            return Promise.resolve();
        }

        // The handlers are gone whatever the server answers
        const promise = this._send<void>(clientMessage.unsub(path));
        promise.catch(ignore);
        return promise;
    }

    // ---- Internals: connection lifecycle ----

    private _connect(settings: ConnectionSettings, initial: boolean, done: Done): void {

        this._clearReconnectionTimer();
        this._active = settings;

        let ws: WebSocketLike;
        try {
            ws = this._createSocket();
        }
        catch (err) {
            done(toError(err, 'ws'));
            return;
        }

        this._ws = ws;

        let opened = false;
        let helloSent = false;
        let finished = false;
        const finish: Done = (err) => {                 // Called exactly once per attempt

            clearTimeout(timer);
            finished = true;
            done(err);
        };

        // Covers opening the socket and the hello exchange
        const timer = settings.timeout ? setTimeout(() => {

            finish(new PulseError('Connection timed out', 'timeout'));
            this._cleanup(ws);
            if (initial) {
                this._reconnect();
            }
        }, settings.timeout) : undefined;

        // Both close and error events end the socket; whichever comes first detaches the handlers. As in nes, a
        // socket that never opened is reported through onDisconnect only when another attempt follows, and its
        // error says so; the last one fails with 'Socket error'.
        const closed = (event: { code?: number; reason?: string; wasClean?: boolean }, isError: boolean) => {

            const report = opened || this._willReconnect();
            const wasRequested = this._disconnectRequested;
            this._cleanup(ws);

            if (!opened) {
                finish(new PulseError(report || !isError ? 'Connection terminated while waiting to connect' : 'Socket error', 'ws'));
            }
            else if (!helloSent) {
                finish(new PulseError('Socket error', 'ws'));
            }

            if (!report) {
                return;
            }

            const code = event.code ?? 1006;
            const willReconnect = this._willReconnect();
            this._call(this.onDisconnect, willReconnect, {
                code,
                explanation: explanations[code] ?? 'Unknown',
                reason: event.reason ?? '',
                wasClean: event.wasClean ?? false,
                willReconnect,
                wasRequested
            });

            this._reconnect();
        };

        // The hello is tracked with plain callbacks rather than a promise so that its reply is handled in the same
        // turn as the frame that carried it, while this socket is certainly still the current one.
        const hello = (auth: ClientAuth | null | undefined) => {

            helloSent = true;
            const subs = this.subscriptions();
            this._track(ws, clientMessage.hello(auth, subs, this._extensions(subs)), (pulse: HelloResponse['pulse']) => {

                this._helloed(subs);
                this._resumed(pulse);
                this._call(this.onConnect);
                finish();
            }, (err) => {

                if (this._ws !== ws) {
                    if (!finished) {
                        finish(err);                // Socket lost during the hello (a timeout has already reported)
                    }

                    return;
                }

                // The server could not serve the hello for now (a broker outage): try again later, keeping every
                // subscription and position, as after a network failure
                if (transientStatus(err.statusCode)) {
                    finish(err);
                    this._cleanup(ws);
                    if (initial) {
                        this._reconnect();
                    }

                    return;
                }

                if (err.path) {
                    this._drop(err.path);
                }

                // A refused hello stops reconnection: the same credentials would fail the same way
                this._disconnect(() => setTimeout(() => finish(err), 0), true);
            });
        };

        ws.onopen = () => {

            opened = true;
            ws.onopen = null;
            const auth = settings.auth;
            if (typeof auth !== 'function') {
                return hello(auth);
            }

            // Fresh credentials for every hello. Until it is sent, losing the socket or timing out finishes the
            // attempt; a provider that fails counts as a failed attempt too (reconnection retries it).
            const provided = (fresh: ClientAuth | null | undefined, err: PulseError | null) => {

                if (finished) {
                    return;
                }

                if (err) {
                    finish(err);
                    this._cleanup(ws);
                    if (initial) {
                        this._reconnect();
                    }

                    return;
                }

                hello(fresh);
            };

            Promise.resolve().then(auth).then((fresh) => provided(fresh, null), (err) => provided(undefined, toError(err, 'user')));
        };

        ws.onerror = () => closed({}, true);
        ws.onclose = (event) => closed(event, false);
        ws.onmessage = (event) => {

            try {
                this._onMessage(ws, event.data);
            }
            catch (err) {
                /* $lab:coverage:off$ */ this._emitError(toError(err, 'protocol')); /* $lab:coverage:on$ */
            }
        };
    }

    private _createSocket(): WebSocketLike {

        const platform = platformWebSocket();
        const WebSocket = Client.WebSocket ?? platform.WebSocket;

        // $lab:coverage:off$
        if (!platform.node) {
            return new WebSocket(this._url);
        }
        // $lab:coverage:on$

        return new WebSocket(this._url, { maxPayload: 16 * 1024 * 1024, ...this._settings.ws });
    }

    // Brings the server in line with subscription changes made while the hello was in flight
    private _helloed(subs: string[]): void {

        this._ready = true;
        if (this._reconnection) {
            this._reconnection.attempts = 0;
        }

        for (const path of this._subscriptions.keys()) {
            if (!subs.includes(path)) {
                this._sub(path).catch(ignore);
            }
        }

        for (const path of subs) {
            if (!this._subscriptions.has(path)) {
                this._send(clientMessage.unsub(path)).catch(ignore);
            }
        }
    }

    // After a hello reply on a recovery connection: adopt the current position of every path that is not being
    // replayed (replayed publications move it themselves, so a drop during the replay loses nothing), and tell
    // the handlers of the paths that could not be recovered.
    private _resumed(pulse: HelloResponse['pulse']): void {

        const positions = pulse?.positions ?? {};
        const recovered = pulse?.recovered ?? {};
        if (this._joinHandlers.length) {
            const joined = Array.isArray(pulse?.joined) ? pulse.joined : [];
            for (const path of this._joined) {
                if (!joined.includes(path)) {
                    this._positions.forget(path);                   // the server dropped it while we were away
                }
            }

            this._joined = new Set(joined);
        }

        for (const path of Object.keys(positions)) {
            const flags: SubscriptionFlags = { recovered: false };
            const handlers = this._subscriptions.get(path) ?? this._joinedHandlers(path, flags);
            if (!handlers || recovered[path] === true) {
                continue;
            }

            this._positions.adopt(path, positions[path]!);
            if (recovered[path] === false) {
                for (const handler of [...handlers]) {
                    this._call(handler, undefined, flags);
                }
            }
        }
    }

    // Hook for negotiated extensions (hello.pulse). Nothing is sent unless the application opted in (the recovery
    // option, an auth function or an onExpiring handler) so that a stock nes server sees exactly what the nes
    // client would send.
    protected _extensions(subs: string[]): HelloRequest['pulse'] | undefined {

        const pulse: NonNullable<HelloRequest['pulse']> = {};
        if (this._joinHandlers.length) {
            pulse.groups = true;
        }

        if (this._settings.recovery) {
            pulse.recovery = true;
            const positions = this._positions.of([...subs, ...this._joined]);
            if (positions) {
                pulse.positions = positions;
            }
        }

        if (typeof this._active!.auth === 'function' || this.onExpiring !== ignore) {
            pulse.expiry = true;
        }

        return pulse.recovery || pulse.expiry || pulse.groups ? pulse : undefined;
    }

    // The handler of a server-side subscription (as a list, like a path's own handlers), with its flags.
    private _joinedHandlers(path: string, flags: SubscriptionFlags): SubscriptionHandler<any>[] | undefined {

        const segments = path.split('/');
        for (const { segments: pattern, handler } of this._joinHandlers) {
            const params = matchSegments(pattern, segments);
            if (params) {
                flags.path = path;
                flags.params = params;
                return [handler];
            }
        }

        return undefined;
    }

    // A server-side subscription's announcement, publication or end, for a path the application did not subscribe.
    private _onJoined(update: PubMessage | RevokeMessage | JoinMessage): void {

        const flags: SubscriptionFlags = {};
        const handlers = this._joinedHandlers(update.path, flags);
        if (update.type === 'join') {
            this._joined.add(update.path);
            if (update.pulse) {
                this._positions.adopt(update.path, update.pulse.position);
            }

            flags.joined = true;
        }
        else if (update.type === 'revoke') {
            this._joined.delete(update.path);
            this._positions.forget(update.path);
            flags.revoked = true;
        }
        else if (update.position) {
            this._positions.advance(update.path, update.position);
        }

        for (const handler of handlers ?? []) {
            this._call(handler, update.type === 'join' ? undefined : update.message, flags);
        }
    }

    // Expiry warning: renew the credentials with the auth function, if there is one.
    private _expiring(expiresAt: number): void {

        this._call(this.onExpiring, expiresAt);
        const auth = this._active!.auth;
        if (typeof auth !== 'function') {
            return;                         // The application calls reauthenticate()
        }

        // Not through reauthenticate(): the function stays the reconnection auth. A failure leaves the server to
        // close the socket (4002) at expiry; reconnecting then calls the function again.
        Promise.resolve().then(auth)
            .then((fresh) => this._send(clientMessage.reauth(fresh)))
            .catch((err) => this._emitError(err instanceof PulseError ? err : toError(err, 'user')));
    }

    private _disconnect(next: () => void, isInternal: boolean): void {

        this._reconnection = null;
        this._clearReconnectionTimer();
        const requested = this._disconnectRequested || !isInternal;

        if (this._disconnectListeners) {
            this._disconnectRequested = requested;
            this._disconnectListeners.push(next);
            return;
        }

        const ws = this._ws;
        if (!ws) {
            return next();
        }

        // A socket already closing still reports its close, which runs the listeners (close() is then a no-op).
        this._disconnectRequested = requested;
        this._disconnectListeners = [next];
        ws.close();
    }

    private _cleanup(ws: WebSocketLike): void {

        this._ws = null;
        ws.onopen = null;
        ws.onclose = null;
        ws.onerror = ignore;                    // ws (Node) throws on an error event without a listener
        ws.onmessage = null;
        if (ws.readyState === OPEN || ws.readyState === CONNECTING) {
            ws.close();
        }

        this.id = null;
        this._ready = false;
        this._assembler.reset();
        for (const tracker of this._presence) {
            tracker.synced = false;
        }

        this._discarding = false;

        if (this._heartbeatTimer) {
            clearTimeout(this._heartbeatTimer);
            this._heartbeatTimer = null;
        }

        const requests = this._requests;
        this._requests = new Map();
        for (const request of requests.values()) {
            if (request.timer) {
                clearTimeout(request.timer);
            }

            request.reject(new PulseError('Request failed - server disconnected', 'disconnect'));
        }

        for (const path of [...this._subRetries.keys()]) {
            this._cancelRetry(path, new PulseError('Request failed - server disconnected', 'disconnect'));
        }

        const listeners = this._disconnectListeners;
        if (listeners) {
            this._disconnectListeners = null;
            this._disconnectRequested = false;
            for (const listener of listeners) {
                listener();
            }
        }
    }

    private _willReconnect(): boolean {

        // A pending timer means an attempt is already scheduled (nes reports false in that case)
        return !!this._reconnection && (this._reconnectionTimer !== null || this._reconnection.attempts < this._reconnection.retries);
    }

    // Exponential backoff with jitter: attempt n waits min(maxDelay, delay * 2^n) scaled down by up to `jitter`,
    // so that many clients dropped together do not all come back in the same millisecond.
    private _reconnect(): void {

        const reconnection = this._reconnection;
        if (!reconnection || this._reconnectionTimer) {
            return;
        }

        if (reconnection.attempts >= reconnection.retries) {
            return this._disconnect(ignore, true);
        }

        const wait = this._backoff(reconnection, reconnection.attempts);
        ++reconnection.attempts;

        this._reconnectionTimer = setTimeout(() => {

            this._reconnectionTimer = null;
            this._connect(reconnection.settings, false, (err) => {

                if (err) {
                    this._emitError(err);
                    this._reconnect();
                }
            });
        }, wait);
    }

    private _backoff(reconnection: Reconnection, attempt: number): number {

        const base = Math.min(reconnection.maxDelay, reconnection.delay * 2 ** attempt);
        return Math.round(base * (1 - reconnection.jitter * Math.random()));
    }

    private _clearReconnectionTimer(): void {

        if (this._reconnectionTimer) {
            clearTimeout(this._reconnectionTimer);
            this._reconnectionTimer = null;
        }
    }

    // ---- Internals: sending ----

    private _isReady(): boolean {

        return this._ready && this._ws!.readyState === OPEN;
    }

    // A sub the server cannot serve for now (502, 503, 504: e.g. its broker has not confirmed the subscription)
    // is sent again with the reconnection backoff, up to `retries` times, while the path is still wanted. Until
    // it is answered it behaves as a sub in flight: another error, unsubscribe(), or the loss of the connection
    // rejects it and drops the path.
    private _sub(path: string): Promise<void> {

        const handlers = this._subscriptions.get(path);
        const attempt = (failures: number): Promise<void> => {

            // The reply's position (recovery) is adopted as the reply is read, before any publication that follows it
            return this._send<void>(clientMessage.sub(path), (pulse: ServerResponse['pulse']) => {

                if (pulse?.position && this._subscriptions.has(path)) {
                    this._positions.adopt(path, pulse.position);
                }
            }).catch((err: PulseError) => {

                const reconnection = this._reconnection;
                if (!transientStatus(err.statusCode) || !reconnection || failures >= reconnection.retries || this._subscriptions.get(path) !== handlers) {
                    throw err;
                }

                return new Promise<void>((resolve, reject) => {

                    const timer = setTimeout(() => {

                        this._subRetries.delete(path);
                        resolve(attempt(failures + 1));
                    }, this._backoff(reconnection, failures));

                    this._subRetries.set(path, { timer, cancel: (reason) => reject(reason ?? err) });
                });
            });
        };

        const promise = attempt(0);
        promise.catch(() => {

            if (this._subscriptions.get(path) === handlers) {              // not a later subscription of the path
                this._drop(path);
            }
        });

        return promise;
    }

    // Ends the wait of a sub to be sent again: it rejects with `reason`, or with its last error (unsubscribed)
    private _cancelRetry(path: string, reason?: PulseError): void {

        const retry = this._subRetries.get(path);
        if (retry) {
            this._subRetries.delete(path);
            clearTimeout(retry.timer);
            retry.cancel(reason);
        }
    }

    // Ends a subscription on this side, and with it its recovery position
    private _drop(path: string): void {

        this._subscriptions.delete(path);
        this._positions.forget(path);
        this._cancelRetry(path);
    }

    // Sends a request once the hello is answered, resolving with its response (passed through `reply`, called as
    // the response is read)
    private _send<T>(request: Unnumbered, reply?: (value: any) => T): Promise<T> {

        if (!this._isReady()) {
            return Promise.reject(new PulseError('Failed to send message - server disconnected', 'disconnect'));
        }

        return new Promise<T>((resolve, reject) => this._track(this._ws!, request, reply ? (value) => resolve(reply(value)) : resolve, reject));
    }

    // Sends a request and records its callbacks until the response, a timeout or the end of the socket
    private _track(ws: WebSocketLike, request: Unnumbered, resolve: (value: any) => void, reject: (err: PulseError) => void): void {

        const id = ++this._ids;
        let encoded: string;
        try {
            encoded = this._encode(request, id);
        }
        catch (err) {
            return reject(toError(err, 'user'));
        }

        const record: Pending = { resolve, reject, timer: null };
        const timeout = this._settings.timeout;
        if (timeout) {
            record.timer = setTimeout(() => {

                // A late response is dropped quietly: the record stays, its callbacks are spent
                record.timer = null;
                record.resolve = record.reject = ignore;
                reject(new PulseError('Request timed out', 'timeout'));
            }, timeout);
        }

        this._requests.set(id, record);
        try {
            ws.send(encoded);
        }
        catch (err) {
            /* $lab:coverage:off$ */
            if (record.timer) {
                clearTimeout(record.timer);
            }

            this._requests.delete(id);
            reject(toError(err, 'ws'));
            /* $lab:coverage:on$ */
        }
    }

    // The id goes last, so that the frame is byte for byte what the nes client sends
    private _encode(request: Unnumbered, id: number): string {

        return JSON.stringify({ ...request, id });
    }

    // ---- Internals: receiving ----

    private _onMessage(ws: WebSocketLike, data: unknown): void {

        this._beat(ws);

        if (typeof data !== 'string') {
            return this._emitError(new PulseError('Received a binary message', 'protocol'));
        }

        // Chunked messages: '+' parts then a final '!' part, bounded by maxMessageChars
        const prefix = data[0];
        const isChunk = prefix === '+' || prefix === '!';
        if (this._discarding) {
            if (prefix === '+') {
                return;
            }

            this._discarding = false;
            if (prefix === '!') {
                return;
            }
        }

        if (!isChunk && this._assembler.pending) {
            this._assembler.reset();
            this._emitError(new PulseError('Received an incomplete message', 'protocol'));
        }

        let text: string | null;
        try {
            text = this._assembler.push(data);
        }
        catch (err) {
            this._discarding = prefix === '+';
            return this._emitError(toError(err, 'protocol'));
        }

        if (text === null) {
            return;
        }

        if (text.length > this._maxChars) {
            return this._emitError(new PulseError(`Message exceeds ${this._maxChars} characters`, 'protocol'));
        }

        let update: ServerMessage;
        try {
            update = validateServerMessage(JSON.parse(text));
        }
        catch (err) {
            return this._emitError(toError(err, 'protocol'));
        }

        // Error responses carry the Boom output: statusCode, payload { error, message }, headers, and path for subs
        const fields = update as ErrorFields;
        let error: PulseError | null = null;
        if (fields.statusCode && fields.statusCode >= 400) {
            const payload = fields.payload as { message?: unknown; error?: unknown } | undefined;
            const text = payload && typeof payload === 'object' ? payload.message || payload.error : undefined;
            error = new PulseError(typeof text === 'string' && text ? text : 'Error', 'server');
            error.statusCode = fields.statusCode;
            error.data = fields.payload;
            error.headers = fields.headers as Record<string, string> | undefined;
            error.path = fields.path;
        }

        switch (update.type) {
            case 'ping':
                // Untracked: the server does not answer. ws and browsers drop a send on a closing socket silently.
                ws.send(this._encode(clientMessage.ping(), ++this._ids));
                return;

            case 'update':
                return this._call(this.onUpdate, update.message);

            case 'pub':
            case 'revoke': {
                if (!this._subscriptions.has(update.path) && this._joinHandlers.length) {
                    return this._onJoined(update);
                }

                const handlers = this._subscriptions.get(update.path);
                const flags: SubscriptionFlags = {};
                if (update.type === 'revoke') {
                    this._drop(update.path);
                    flags.revoked = true;
                }
                else if (handlers && update.position) {
                    this._positions.advance(update.path, update.position);
                }

                if (handlers && update.message !== undefined) {
                    for (const handler of [...handlers]) {
                        this._call(handler, update.message, flags);
                    }
                }

                return;
            }

            case 'join':
                return this._onJoined(update);                    // Extension, only sent when negotiated

            case 'expiring':
                return this._expiring(update.expiresAt);           // Extension, only sent when negotiated
        }

        const request = update.id === undefined ? undefined : this._requests.get(update.id);
        if (!request) {
            return this._emitError(error ?? new PulseError('Received response for unknown request', 'protocol'));
        }

        if (request.timer) {
            clearTimeout(request.timer);
        }

        this._requests.delete(update.id!);

        if (error) {
            return request.reject(error);
        }

        switch (update.type) {
            case 'request':
                return request.resolve({ payload: update.payload, statusCode: update.statusCode, headers: update.headers });

            case 'message':
                return request.resolve({ payload: update.message });

            case 'hello':
                this.id = update.socket ?? null;
                this._heartbeatMs = update.heartbeat ? update.heartbeat.interval + update.heartbeat.timeout : false;
                this._beat(ws);
                return request.resolve(update.pulse);

            case 'reauth':
                return request.resolve(true);

            case 'sub':
            case 'unsub':
                return request.resolve(update.pulse);
        }

        request.reject(new PulseError('Received invalid response', 'protocol'));
        this._emitError(new PulseError(`Received unknown response type: ${update.type}`, 'protocol'));
    }

    // Any frame from the server proves the connection alive; silence for interval + timeout drops it.
    private _beat(ws: WebSocketLike): void {

        if (this._heartbeatTimer) {
            clearTimeout(this._heartbeatTimer);
            this._heartbeatTimer = null;
        }

        if (!this._heartbeatMs) {
            return;
        }

        this._heartbeatTimer = setTimeout(() => {

            this._heartbeatTimer = null;
            this._emitError(new PulseError('Disconnecting due to heartbeat timeout', 'timeout'));
            this._call(this.onHeartbeatTimeout, this._willReconnect());

            // A dead network may never complete the closing handshake: report the loss now rather than waiting
            const onclose = ws.onclose!;
            ws.close(CloseCode.heartbeatTimeout, 'Heartbeat timeout');
            onclose({ code: CloseCode.heartbeatTimeout, reason: 'Heartbeat timeout', wasClean: false });
        }, this._heartbeatMs);
    }

    // ---- Internals: callbacks ----

    private _emitError(err: PulseError): void {

        this._call(this.onError, err);
    }

    // Application callbacks run inside WebSocket event handlers: an exception must not escape into the socket
    private _call<A extends unknown[]>(fn: (...args: A) => void, ...args: A): void {

        try {
            fn.apply(this, args);
        }
        catch (err) {
            if (fn as unknown !== this.onError) {
                this._call(this.onError, toError(err, 'user'));
            }
        }
    }
}
