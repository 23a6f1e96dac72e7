// One connection: validates each frame at the edge, dispatches it by type, and owns the send path.
// Sends go synchronously into ws; its buffer is the queue, bounded by the outbound high-water mark.

import { Buffer } from 'node:buffer';             // not the global: Node 20 defines that one as a getter, called on every use
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

import * as Boom from '@hapi/boom';
import type { Server } from '@hapi/hapi';
import type { RawData, WebSocket } from 'ws';

import { CloseCode, chunk, encode, parseClientMessage, transientStatus, version } from '../protocol';
import type { ErrorReply, HelloResponse, ProtocolError, ServerMessage } from '../protocol';
import type { ClientMessage, HelloRequest, Limits as ProtocolLimits, MessageId, Position, ReauthRequest, SubRequest, TunnelRequest, UnsubRequest } from '../protocol';
import type { Authenticator, SocketAuth } from './auth';
import * as Catchups from './catchup';
import type { Catchup } from './catchup';
import type { Deadline, Deadlines } from './deadlines';
import type { Metrics } from './metrics';
import { textFrame, windowOf } from './compression';
import type { Deflater } from './compression';
import { PathMap } from './path-map';
import type { HelloJoin } from './groups';
import type { Frame, Prepared } from './prepared';
import type { Subscriptions, Topic } from './subscriptions';
import { identityHeaders } from './tunnel';
import type { Tunnel } from './tunnel';

export type { SocketAuth } from './auth';

export interface SocketInfo {
    remoteAddress: string;
    remotePort: number;
    'x-forwarded-for'?: string;
}

// What a socket reads of the settings.
export interface SocketConfig {
    helloTimeout: number | false;
    heartbeat: false | { interval: number; timeout: number };
    maxChunkChars: number | false;
    closeTimeout: number;
    limits: { maxInFlight: number; maxSubscriptions: number; maxBufferedBytes: number; rate: false | { messages: number; interval: number } };
    protocolLimits: ProtocolLimits;
    onConnection?: ((socket: Socket) => void | Promise<void>) | undefined;
    onMessage?: ((socket: Socket, message: any) => unknown) | undefined;
}

// What a socket needs of the server that accepted it (the listener).
export interface SocketHost extends Catchups.RecoverySource<Connection> {
    readonly server: Server;
    readonly config: SocketConfig;
    readonly subscriptions: Subscriptions;
    readonly authenticator: Authenticator<Connection>;
    readonly tunnel: Tunnel;
    readonly deflater: Deflater | null;                     // when compression is on: shared by every socket
    readonly metrics: Metrics | null;
    flushLater(socket: Connection): void;                       // write the gathered frames on the next tick
    remove(socket: Connection): Promise<void>;                  // ws reported the close; never rejects
    readonly deadlines: Deadlines<Connection>;              // calls expiryDue() when a socket's expiry deadline comes
    joinGroups(socket: Connection, positions: Record<string, Position> | undefined): Promise<HelloJoin>;   // the user's recorded memberships, at hello
}

// A socket only moves forward: closing stops every send at once, closed is when ws reported the close.
const enum State { connected, helloing, ready, closing, closed }

// One shared listener for every socket instead of a closure each: idle sockets are most of the heap.
export const kSocket = Symbol('pulse.socket');
export type SocketWs = WebSocket & { [kSocket]: Connection };
type WsHandler = (...args: any[]) => void;

const onMessage = function (this: SocketWs, data: RawData, isBinary: boolean): void {

    this[kSocket].onFrame(data, isBinary);
};

// ws refused a frame (and sent the close frame with the code below): the close is the server's.
const refusedFrame: Record<string, number> = { WS_ERR_UNSUPPORTED_MESSAGE_LENGTH: 1009, WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH: 1009, WS_ERR_INVALID_UTF8: 1007 };

const onError = function (this: SocketWs, err: Error & { code?: string }): void {

    this[kSocket].refused(refusedFrame[err.code!] ?? CloseCode.protocolError, err.message);
    this.terminate();
};

const onClose = function (this: SocketWs, code: number, reason: Buffer): void {

    this[kSocket].wsClosed(code, reason);
};

const OPEN = 1;

// What a waiting frame counts towards the outbound limit; one still compressing, its uncompressed size.
const sizeOf = (frame: Frame | string): number => (typeof frame === 'string' || Buffer.isBuffer(frame) ? frame.length : frame.bytes);

// What only an authenticated socket needs.
class Credential {
    verifiedAt = 0;
    verifying: Promise<boolean> | null = null;          // a credential check under way: every message waits for it
    credentialsVersion = 0;                             // counts credential changes (hello, reauth)
    identityVersion = 0;                                // counts changes of user or strategy
    expiresAt: number | null = null;
    expiry: Deadline<Connection> | null = null;             // the next warning or close, in the host's deadlines
    warn = false;                                       // that deadline is the warning
    failed = false;                                     // a check failed: the socket is closing
}

const asText = { binary: false, compress: false };          // ws never compresses: see compression.ts
const batchBytes = 64 * 1024;                  // gathered frames are written early past this many bytes

// The socket the application is handed (onConnection, onDisconnection, onMessage, subscription hooks and filters,
// eachSocket, request.socket): @hapi/nes's socket API, and nothing of the connection's internals.
export interface Socket {
    readonly id: string;
    readonly app: Record<string, unknown>;                 // the application's own state
    readonly auth: SocketAuth;
    readonly server: Server;
    readonly info: SocketInfo;
    isOpen(): boolean;
    disconnect(): Promise<void>;
    send(message: unknown): Promise<void>;
    publish(path: string, message: unknown): Promise<void>;
    revoke(path: string, message?: unknown, options?: { ignoreClose?: boolean }): Promise<void>;
}

// One connection, internal: the public Socket, its state and its send path.
export class Connection implements Socket {

    readonly id: string;
    private appState: Record<string, unknown> | null = null;
    private authState: SocketAuth | null = null;
    readonly info: SocketInfo;

    // Internal state, read by the listener, auth and subscriptions.
    readonly subscriptions = new PathMap<Topic>();
    user: string | null = null;
    awaitingPong = false;
    beatSlot = -1;                                      // where the listener's heartbeat rounds keep this socket
    verifySlot = -1;                                    // and its credential re-check rounds
    inFlight = 0;
    recovery = false;                            // negotiated the recovery extension
    expiry = false;                              // negotiated the expiry extension
    groups = false;                              // negotiated the groups extension (told of server-side subscriptions)
    grouped: Set<string> | null = null;          // paths the server joined through a recorded membership (groups.ts)
    readonly upgradeHeaders: Readonly<Record<string, string>>;          // what tunnelled requests inherit: host, cookie, x-forwarded-*
    readonly connectedAt = Date.now();
    closeCode = 1005;                                           // the server's close code, else the client's (1005: none)
    closeReason = '';
    private closedByServer = false;
    private reservedSubs = 0;                                   // subs past the limit check, not yet recorded

    private state = State.connected;
    private helloTimer: NodeJS.Timeout | null = null;
    private killTimer: NodeJS.Timeout | null = null;
    private closedWaiters: (() => void)[] | null = null;        // disconnect() calls waiting for State.closed
    private pending: Buffer[] | null = null;                     // frames gathered this tick
    private pendingBytes = 0;
    private readonly deflateBits: number;                         // negotiated compression window, 0 for none
    private waiting: (Frame | string)[] | null = null;           // everything sent since a large message began compressing
    private waitingBytes = 0;
    private closing: [code?: number, reason?: string] | null = null;   // a close that waits for them
    private pathQueue: Map<string, Promise<void>> | null = null;   // sub/unsub still running, per path
    catchups: Map<string, Catchup> | null = null;                // history paths catching up, or with a floor
    private credential: Credential | null = null;                 // made at the first authentication
    private rate: { window: number; count: number } | null = null;  // with limits.rate only

    constructor(private readonly ws: WebSocket, req: IncomingMessage, private readonly host: SocketHost, id: string) {

        this.id = id;
        this.upgradeHeaders = identityHeaders(req);
        this.info = {
            remoteAddress: req.socket.remoteAddress!,
            remotePort: req.socket.remotePort!,
            'x-forwarded-for': req.headers['x-forwarded-for'] as string | undefined
        };

        this.deflateBits = host.deflater ? windowOf(ws) : 0;
        const helloTimeout = host.config.helloTimeout;
        if (helloTimeout) {
            this.helloTimer = setTimeout(() => this.close(CloseCode.helloTimeout, 'Hello timeout'), helloTimeout);
        }

        (ws as SocketWs)[kSocket] = this;
        ws.on('message', onMessage as WsHandler);
        ws.on('error', onError as WsHandler);
        ws.on('close', onClose as WsHandler);                          // emitted once; once() would wrap it (~170 bytes)
    }

    // ---- Public API (as @hapi/nes) ----

    // Application state, made on first use (most sockets never touch it).
    get app(): Record<string, unknown> {

        return (this.appState ??= {});
    }

    // As nes's socket.auth; made on first use (an unauthenticated socket nobody asks about has none).
    get auth(): SocketAuth {

        return (this.authState ??= { isAuthenticated: false, credentials: null, artifacts: null });
    }

    get server(): Server {

        return this.host.server;
    }

    // Internal reads that make nothing.
    get authenticated(): boolean {

        return this.authState?.isAuthenticated ?? false;
    }

    get credentials(): Record<string, any> | null {

        return this.authState?.credentials ?? null;
    }

    // Credential bookkeeping (read and set by auth and subscriptions), kept apart: most sockets never authenticate.
    private get authenticatedState(): Credential {

        return (this.credential ??= new Credential());
    }

    get verifiedAt(): number {

        return this.authenticatedState.verifiedAt;               // read for authenticated sockets only
    }

    set verifiedAt(at: number) {

        this.authenticatedState.verifiedAt = at;
    }

    get verifying(): Promise<boolean> | null {

        return this.credential?.verifying ?? null;
    }

    set verifying(check: Promise<boolean> | null) {

        this.authenticatedState.verifying = check;
    }

    get credentialsVersion(): number {

        return this.credential?.credentialsVersion ?? 0;
    }

    set credentialsVersion(version: number) {

        this.authenticatedState.credentialsVersion = version;
    }

    get identityVersion(): number {

        return this.credential?.identityVersion ?? 0;
    }

    set identityVersion(version: number) {

        this.authenticatedState.identityVersion = version;
    }

    get expiresAt(): number | null {

        return this.credential?.expiresAt ?? null;
    }

    // Completed hello: may receive broadcasts.
    get ready(): boolean {

        return this.state === State.ready;
    }

    isOpen(): boolean {

        return this.state < State.closing && this.ws.readyState === OPEN;
    }

    disconnect(): Promise<void> {

        this.close();
        if (this.state === State.closed) {
            return Promise.resolve();
        }

        return new Promise((resolve) => {

            (this.closedWaiters ??= []).push(resolve);
        });
    }

    send(message: unknown): Promise<void> {

        return this.sendObject({ type: 'update', message });
    }

    publish(path: string, message: unknown): Promise<void> {

        return this.sendObject({ type: 'pub', path, message });
    }

    async revoke(path: string, message?: unknown, options: { ignoreClose?: boolean } = {}): Promise<void> {

        await this.host.subscriptions.unsubscribe(this, path);
        if (options.ignoreClose && !this.isOpen()) {
            return;
        }

        return this.sendObject(message === null || message === undefined ? { type: 'revoke', path } : { type: 'revoke', path, message });
    }

    // ---- Send path ----

    // For the application's sends: a message that cannot be encoded rejects, and nothing is sent.
    private sendObject(message: ServerMessage): Promise<void> {

        if (!this.isOpen()) {
            return Promise.reject(Boom.internal('Socket not open'));
        }

        let text: string;
        try {
            text = encode(message);
        }
        catch (err) {
            return Promise.reject(err);
        }

        this.sendText(text);
        return Promise.resolve();
    }

    // Replies and notices (the server built them: they encode).
    // Groups extension: the server subscribed this socket to `path` (told only when negotiated, before any pub of it).
    joined(path: string, position: Position | null): void {

        if (this.groups) {
            this.reply(position ? { type: 'join', path, pulse: { position } } : { type: 'join', path });
        }
    }

    private reply(message: ServerMessage | ErrorReply): void {

        this.sendText(encode(message));
    }

    sendText(text: string): void {

        this.host.metrics?.sentText(text);
        const max = this.host.config.maxChunkChars;
        if (max && text.length > max) {
            for (const part of chunk(text, max)) {
                this.write(part);
            }

            return;
        }

        this.write(text);
    }

    // A live pub of a subscribed path: held while the path catches up, dropped when recovery sent it already.
    deliver(prepared: Prepared): void {

        if (this.catchups === null || Catchups.admit(this, prepared)) {
            this.sendPrepared(prepared);
        }
    }

    sendPrepared(prepared: Prepared): void {

        if (!this.isOpen()) {
            return;
        }

        const max = this.host.config.maxChunkChars;
        const parts = max ? prepared.chunked(max, this.recovery) : null;
        if (parts) {
            this.host.metrics?.sentText(prepared.text);
            if (!this.deflateBits) {
                for (const part of parts) {
                    this.write(part);
                }

                return;
            }
        }

        // Server frames are not masked and compressed frames take no context, so the same frame bytes suit every
        // socket (with the same compression window). The frames of one tick are gathered and written to the TCP
        // socket together, in one write.
        if (this.behind()) {
            return;
        }

        if (parts) {
            for (const frame of prepared.deflatedChunks(parts, this.recovery, this.deflateBits, this.host.deflater!)) {
                this.gather(frame);
            }

            return;
        }

        const frame = this.deflateBits ? prepared.deflatedFrame(this.recovery, this.deflateBits, this.host.deflater!) : prepared.frame(this.recovery);
        this.host.metrics?.sentFrame(prepared, prepared.frame(this.recovery));          // message bytes, before compression
        this.gather(frame);
    }

    private gather(frame: Frame): void {

        if (this.waiting !== null || !Buffer.isBuffer(frame)) {
            this.wait(frame);
            return;
        }

        if (this.pending === null) {
            this.pending = [frame];
            this.host.flushLater(this);
        }
        else {
            this.pending.push(frame);
        }

        this.pendingBytes += frame.length;
        if (this.pendingBytes > batchBytes) {
            this.flush();
        }
    }

    // Writes the gathered frames behind anything ws wrote before; runs on the next tick, and before any
    // other write or the close frame so that order always holds.
    flush(): void {

        const pending = this.pending;
        if (pending === null) {
            return;
        }

        this.pending = null;
        const bytes = this.pendingBytes;
        this.pendingBytes = 0;
        if (this.ws.readyState === OPEN) {
            this.rawSocket().write(pending.length === 1 ? pending[0]! : Buffer.concat(pending, bytes));
        }
    }

    // ws sets it before 'connection' (so before this Connection exists) and never clears it.
    private rawSocket(): Duplex {

        return (this.ws as unknown as { _socket: Duplex })._socket;
    }

    // A socket that is still more than maxBufferedBytes behind when the next message comes has stopped
    // reading (or cannot keep up): cut it off before its backlog grows further. Checked before writing, so
    // one message larger than the limit still reaches a client that reads.
    private behind(): boolean {

        const buffered = this.ws.bufferedAmount + this.pendingBytes + this.waitingBytes;
        if (buffered <= this.host.config.limits.maxBufferedBytes) {
            return false;
        }

        this.server.log(['pulse', 'slow-consumer'], { socket: this.id, buffered });
        this.host.metrics?.limitHit('maxBufferedBytes');
        this.close(CloseCode.slowConsumer, 'Slow consumer');
        return true;
    }

    private write(data: string): void {

        if (!this.isOpen() || this.behind()) {
            return;
        }

        const deflater = this.host.deflater;
        const frame = this.deflateBits && Buffer.byteLength(data) >= deflater!.threshold ? deflater!.frame(textFrame(data), this.deflateBits) : data;
        if (this.waiting !== null || (typeof frame !== 'string' && !Buffer.isBuffer(frame))) {
            this.wait(frame);
            return;
        }

        // Replies go out at once (a reply per tick gains nothing from batching), after this tick's frames.
        this.flush();
        if (typeof frame === 'string') {
            this.ws.send(frame, asText);
        }
        else {
            this.rawSocket().write(frame);
        }
    }

    // A large message is compressed on the thread pool: it and whatever the socket sends after it wait, in order.
    private wait(frame: Frame | string): void {

        this.waitingBytes += sizeOf(frame);
        if (this.waiting !== null) {
            this.waiting.push(frame);
            return;
        }

        this.flush();
        this.waiting = [frame];
        void this.drain(this.waiting);
    }

    private async drain(waiting: (Frame | string)[]): Promise<void> {

        while (waiting.length) {
            const next = waiting[0]!;
            const data = typeof next === 'string' || Buffer.isBuffer(next) ? next : await next;      // never rejects
            waiting.shift();
            this.waitingBytes -= sizeOf(next);
            if (this.ws.readyState === OPEN) {
                if (typeof data === 'string') {
                    this.ws.send(data, asText);
                }
                else {
                    this.rawSocket().write(data);
                }
            }
        }

        this.waiting = null;
        if (this.closing) {
            this.ws.close(...this.closing);
        }
    }

    // Credentials expiry: sockets that negotiated the extension are warned `notice` ms ahead so they can
    // reauth; at expiry the socket is closed unless a reauth moved the expiry.
    expireAt(expiresAt: number | null, notice: number): void {

        const credential = this.authenticatedState;
        if (credential.expiry) {
            this.host.deadlines.cancel(credential.expiry);
            credential.expiry = null;
        }

        credential.expiresAt = expiresAt;
        if (expiresAt === null || this.state === State.closed) {         // a socket gone mid-hello keeps no deadline
            return;
        }

        credential.warn = this.expiry && notice > 0;
        credential.expiry = this.host.deadlines.add(this, credential.warn ? expiresAt - notice : expiresAt);
    }

    // Called by the host's deadlines (not before the deadline, at most a slice of them later).
    expiryDue(): void {

        const credential = this.credential!;
        credential.expiry = null;
        if (!credential.warn) {
            this.close(CloseCode.authExpired, 'Credentials expired');
            return;
        }

        this.reply({ type: 'expiring', expiresAt: credential.expiresAt! });
        this.expireAt(credential.expiresAt, 0);
    }

    // Closing stops all sends at once; a peer that does not answer the close frame is cut off.
    close(code?: number, reason = ''): void {

        if (this.state >= State.closing) {
            return;
        }

        this.flush();
        this.state = State.closing;
        if (code !== undefined) {
            this.closedByServer = true;
            this.closeCode = code;
            this.closeReason = reason;
        }

        this.clearHelloTimer();
        if (this.waiting !== null) {
            this.closing = [code, reason];                  // after what was sent before it
        }
        else {
            this.ws.close(code, reason);
        }

        this.killTimer = setTimeout(() => this.ws.terminate(), this.host.config.closeTimeout);
    }

    // ws refused a frame: it closed with `code` itself.
    refused(code: number, reason: string): void {

        if (!this.closedByServer) {
            this.closedByServer = true;
            this.closeCode = code;
            this.closeReason = reason;
            if (code === CloseCode.messageTooBig) {
                this.host.metrics?.limitHit('maxPayload');
            }
        }
    }

    wsClosed(code: number, reason: Buffer): void {

        if (!this.closedByServer) {
            this.closeCode = code;
            this.closeReason = reason.toString();
        }

        void this.host.remove(this);
    }

    // Called by the listener once ws reports the close; resolves disconnect().
    onClosed(): void {

        this.state = State.closed;
        this.clearHelloTimer();
        clearTimeout(this.killTimer!);
        if (this.credential?.expiry) {
            this.host.deadlines.cancel(this.credential.expiry);
            this.credential.expiry = null;
        }

        this.catchups = null;
        for (const resolve of this.closedWaiters ?? []) {
            resolve();
        }

        this.closedWaiters = null;
    }

    private clearHelloTimer(): void {

        if (this.helloTimer) {
            clearTimeout(this.helloTimer);
            this.helloTimer = null;
        }
    }

    sendError(err: unknown, type?: string, id?: MessageId): void {

        const boom = Boom.boomify(err instanceof Error ? err : new Error(String(err)));
        const { statusCode: _, ...payload } = boom.output.payload;
        const message: ErrorReply = {
            statusCode: boom.output.statusCode,
            payload,
            headers: this.host.tunnel.filterHeaders(boom.output.headers as Record<string, unknown>)
        };

        if (type !== undefined) {
            message.type = type;
        }

        if (id !== undefined) {
            message.id = id;
        }

        const errorPath = (boom as Boom.Boom & { path?: string }).path;          // the failing hello subscription
        if (errorPath !== undefined) {
            message.path = errorPath;
        }

        this.reply(message);
    }

    // ---- Incoming ----

    onFrame(data: RawData, isBinary: boolean): void {

        if (this.state >= State.closing) {
            return;
        }

        this.awaitingPong = false;
        if (isBinary) {
            this.host.metrics?.received('binary', (data as Buffer).length);
            this.close(CloseCode.unsupportedData, 'Binary frames are not supported');
            return;
        }

        const rate = this.host.config.limits.rate;
        if (rate) {
            const now = Date.now();
            const counted = (this.rate ??= { window: 0, count: 0 });
            if (now - counted.window >= rate.interval) {
                counted.window = now;
                counted.count = 0;
            }

            if (++counted.count > rate.messages) {
                this.host.metrics?.limitHit('rate');
                this.close(CloseCode.rateLimited, 'Message rate limit exceeded');
                return;
            }
        }

        let message: ClientMessage;
        try {
            message = parseClientMessage(data.toString(), this.host.config.protocolLimits);
        }
        catch (err) {
            const error = err as ProtocolError;
            this.host.metrics?.received('invalid', (data as Buffer).length);

            // As nes: once type and id are read, a message before the hello is refused for that alone (a ping with
            // both is valid, so it never gets here)
            if (error.id !== undefined && error.type !== undefined && error.type !== 'hello' && this.state !== State.ready) {
                this.sendError(this.notReady(), error.type, error.id);
                return;
            }

            this.sendError(Boom.badRequest(error.message), error.type, error.id);
            if (error.type === 'hello' && this.state === State.connected) {
                this.close(CloseCode.policyViolation, 'Hello failed');           // a failed hello ends the connection, however it failed
            }

            return;
        }

        this.host.metrics?.received(message.type, (data as Buffer).length);
        if (message.type === 'ping') {
            return;
        }

        if (this.inFlight >= this.host.config.limits.maxInFlight) {
            this.host.metrics?.limitHit('maxInFlight');
            this.sendError(Boom.tooManyRequests('Too many requests in flight'), message.type, message.id);
            return;
        }

        ++this.inFlight;
        this.process(message).finally(() => --this.inFlight);
    }

    private async process(message: Exclude<ClientMessage, { type: 'ping' }>): Promise<void> {

        try {
            if (message.type === 'hello') {
                return await this.hello(message);
            }

            if (this.state !== State.ready) {
                throw this.notReady();
            }

            const verified = this.host.authenticator.verify(this);
            if (verified !== true && !await verified) {
                this.refuseCredentials(message.type, message.id);
                return;
            }

            switch (message.type) {
                case 'reauth': return await this.reauth(message);
                case 'request': return await this.request(message);
                case 'message': return await this.message(message.id, message.message);
                case 'sub': return await this.inOrder(message.path, () => this.subscribe(message));
                case 'unsub': return await this.inOrder(message.path, () => this.unsubscribe(message));
            }
        }
        catch (err) {
            if (this.state < State.closing) {
                this.sendError(err, message.type, message.id);
            }
        }
    }

    // Before the hello and while it is processed, as nes
    private notReady(): Boom.Boom {

        return Boom.badRequest('Connection is not initialized');
    }

    // Every message that waited on the failed check gets its 403 (they resume together), then the socket closes.
    private refuseCredentials(type: string, id: MessageId): void {

        this.sendError(Boom.forbidden('Credential verification failed'), type, id);
        if (!this.authenticatedState.failed) {
            this.authenticatedState.failed = true;
            setImmediate(() => this.close(CloseCode.authExpired, 'Credential verification failed'));
        }
    }

    private async hello(request: HelloRequest): Promise<void> {

        if (this.state !== State.connected) {
            throw Boom.badRequest('Connection already initialized');
        }

        this.state = State.helloing;
        const catchups: Catchup[] = [];
        let unavailable = false;
        let joined: HelloJoin | null = null;
        try {
            if (request.version !== version) {
                throw Boom.badRequest(`Incorrect protocol version (expected ${version} but received ${request.version || 'none'})`);
            }

            if (request.pulse) {
                this.recovery = !!request.pulse.recovery;
                this.expiry = !!request.pulse.expiry;
                this.groups = !!request.pulse.groups;
            }

            await this.host.authenticator.authenticate(this, request.auth, false);
            this.clearHelloTimer();

            if (this.host.config.onConnection && this.isOpen()) {        // not for a socket gone mid-hello
                await this.host.config.onConnection(this);
            }

            for (const path of request.subs ?? []) {                 // validation capped subs at maxSubscriptions
                try {
                    const catchup = await Catchups.subscribe(this.host, this, path, request.pulse?.positions?.[path]);
                    if (catchup) {
                        catchups.push(catchup);
                    }
                }
                catch (err) {
                    const boom = Boom.boomify(err as Error);
                    if (transientStatus(boom.output.statusCode)) {
                        unavailable = true;                 // answered without it, then closed: see below
                        continue;
                    }

                    throw Object.assign(boom, { path });
                }
            }

            if (this.isOpen()) {
                joined = await this.host.joinGroups(this, request.pulse?.positions);
                catchups.push(...joined.catchups);
                unavailable ||= joined.unavailable;
            }
        }
        catch (err) {
            // A failed hello ends the connection once the error has been delivered.
            for (const catchup of catchups) {
                Catchups.release(this, catchup, null);
            }

            if (this.isOpen()) {
                this.sendError(err, 'hello', request.id);
                this.close(CloseCode.policyViolation, 'Hello failed');
            }

            return;
        }

        if (!this.isOpen()) {
            return;
        }

        this.state = State.ready;
        const response: HelloResponse = {
            type: 'hello',
            id: request.id,
            heartbeat: this.host.config.heartbeat,
            socket: this.id
        };

        if (request.pulse) {
            const pulse = this.acknowledge(catchups);
            if (this.groups) {
                pulse.groups = true;
                pulse.joined = joined!.joined;
            }

            response.pulse = pulse;
        }

        this.reply(response);

        // A subscription that failed for now (the broker out of reach): a failed hello would make any nes client
        // give up for good, a close makes it reconnect with backoff and send the same subscriptions again.
        if (unavailable) {
            this.close(CloseCode.tryAgain, 'Subscription unavailable: try again later');
            return;
        }

        await Catchups.catchUp(this.host, this, catchups);
    }

    // The hello reply's extension block: what was accepted, and per history path where the socket stands.
    private acknowledge(catchups: Catchup[]): NonNullable<HelloResponse['pulse']> {

        const pulse: NonNullable<HelloResponse['pulse']> = { recovery: this.recovery, expiry: this.expiry };
        if (this.recovery && catchups.length) {
            const positions: Record<string, Position> = {};
            const recovered: Record<string, boolean> = {};
            for (const catchup of catchups) {
                const report = catchup.report();
                positions[catchup.path] = report.position;
                if (report.recovered !== undefined) {
                    recovered[catchup.path] = report.recovered;
                }
            }

            pulse.positions = positions;
            pulse.recovered = recovered;
        }

        if (this.expiry && this.expiresAt !== null) {
            pulse.expiresAt = this.expiresAt;
        }

        return pulse;
    }

    private async reauth(request: ReauthRequest): Promise<void> {

        const identity = this.identityVersion;
        try {
            await this.host.authenticator.authenticate(this, request.auth, true);
        }
        catch (err) {
            this.sendError(err, 'reauth', request.id);
            this.close(CloseCode.authExpired, 'Reauthentication failed');
            return;
        }

        // New credentials may not hold every subscription the old ones did; another user (or strategy) holds
        // none of what onSubscribe granted the previous one.
        const lost = identity === this.identityVersion ? this.host.subscriptions.unauthorized(this) : [...this.subscriptions.keys()];
        for (const path of lost) {
            await this.revoke(path, null);
        }

        // Presence: members' info from the new credentials; an anonymous socket now a user joins as it, if admitted
        for (const path of await this.host.subscriptions.reauthenticated(this)) {
            await this.revoke(path, null);
        }

        // Clients that negotiated expiry learn the new expiry with the reply.
        this.reply(this.expiry ? { type: 'reauth', id: request.id, pulse: { expiresAt: this.expiresAt } } : { type: 'reauth', id: request.id });
    }

    private async request(request: TunnelRequest): Promise<void> {

        const reply = await this.host.tunnel.inject(this, request);
        this.sendText(reply);
    }

    private async message(id: MessageId, message: unknown): Promise<void> {

        const onMessage = this.host.config.onMessage;
        if (!onMessage) {
            throw Boom.notImplemented();
        }

        const response = await onMessage(this, message);
        this.reply({ type: 'message', id, message: response });
    }

    // Room left under maxSubscriptions, counting the subscriptions still being made.
    room(): number {

        return this.host.config.limits.maxSubscriptions - this.subscriptions.size - this.reservedSubs;
    }

    // Slots taken (or given back, negative) by subscriptions the server is making.
    reserve(count: number): void {

        this.reservedSubs += count;
    }

    // Subs and unsubs of one path take effect in the order they were sent (others run concurrently), server-side
    // ones included.
    inOrder(path: string, work: () => Promise<void>): Promise<void> {

        const previous = this.pathQueue?.get(path);
        const run = previous ? previous.then(work) : work();
        const queued = run.catch(() => { });                             // the error goes to the client, not to the next one
        (this.pathQueue ??= new Map()).set(path, queued);
        queued.then(() => {

            if (this.pathQueue?.get(path) === queued) {
                this.pathQueue.delete(path);
            }
        });

        return run;
    }

    private async subscribe(request: SubRequest): Promise<void> {

        // The slot is taken before any await, so that a burst cannot overshoot the limit.
        const fresh = !this.subscriptions.has(request.path);
        if (fresh) {
            if (this.subscriptions.size + this.reservedSubs >= this.host.config.limits.maxSubscriptions) {
                this.host.metrics?.limitHit('maxSubscriptions');
                throw Boom.tooManyRequests('Too many subscriptions');
            }

            ++this.reservedSubs;
        }

        let catchup: Catchup | null;
        try {
            catchup = await Catchups.subscribe(this.host, this, request.path, request.position);
        }
        finally {
            if (fresh) {
                --this.reservedSubs;
            }
        }

        if (!catchup || !this.recovery) {
            this.reply({ type: 'sub', id: request.id, path: request.path });
            if (catchup) {
                await Catchups.catchUp(this.host, this, [catchup]);
            }

            return;
        }

        this.reply({ type: 'sub', id: request.id, path: request.path, pulse: catchup.report() });
        await Catchups.catchUp(this.host, this, [catchup]);
    }

    private async unsubscribe(request: UnsubRequest): Promise<void> {

        await this.host.subscriptions.unsubscribe(this, request.path);
        this.reply({ type: 'unsub', id: request.id });
    }
}
