// The nes protocol v2 wire contract (see protocol.md), shared by the server and the client.
// This module imports nothing from either side so that the browser bundle stays small.

export const version = '2';

// Close codes the server uses. 1000-1015 are RFC 6455; 4000-4999 are ours (protocol.md lists them).
export const CloseCode = {
    normal: 1000,
    goingAway: 1001,                     // server stopping: reconnect elsewhere
    protocolError: 1002,
    unsupportedData: 1003,               // binary frame
    policyViolation: 1008,               // hello failed
    messageTooBig: 1009,
    tryAgain: 1013,                      // a hello subscription failed for now (broker out of reach): reconnect later
    helloTimeout: 4000,
    heartbeatTimeout: 4001,
    authExpired: 4002,                   // credentials expired or no longer verify
    slowConsumer: 4003,                  // outbound buffer over the high-water mark
    rateLimited: 4004,
    resync: 4005                         // the server missed publishes it cannot replay: reconnect to recover
} as const;

export type CloseCode = typeof CloseCode[keyof typeof CloseCode];

// Error statuses that say "not now" rather than "no" (bad gateway, unavailable, gateway timeout): a client
// retries them with backoff and keeps its subscriptions.
export const transientStatus = (statusCode: number | undefined): boolean => statusCode === 502 || statusCode === 503 || statusCode === 504;

// Extensions are negotiated: the client lists them in hello.pulse, the server echoes what it accepted.
export interface HelloExtensions {
    recovery?: boolean;
    expiry?: boolean;
    groups?: boolean;                    // the server may subscribe the socket itself (join) (§8.4)
}

export interface Position {
    epoch: string;
    offset: number;
}

// ---- Client to server ----

export type MessageId = number | string;

export interface HelloRequest {
    type: 'hello';
    id: MessageId;
    version: string;
    auth?: unknown;
    subs?: string[];
    pulse?: HelloExtensions & { positions?: Record<string, Position> };
}

export interface ReauthRequest {
    type: 'reauth';
    id: MessageId;
    auth: unknown;
}

export interface TunnelRequest {
    type: 'request';
    id: MessageId;
    method: string;
    path: string;
    headers?: Record<string, string>;
    payload?: unknown;
}

export interface MessageRequest {
    type: 'message';
    id: MessageId;
    message?: unknown;
}

export interface SubRequest {
    type: 'sub';
    id: MessageId;
    path: string;
    position?: Position;
}

export interface UnsubRequest {
    type: 'unsub';
    id: MessageId;
    path: string;
}

export interface PingRequest {
    type: 'ping';
    id: MessageId;
}

export type ClientMessage = HelloRequest | ReauthRequest | TunnelRequest | MessageRequest | SubRequest | UnsubRequest | PingRequest;

// A client message as built, before its sender numbers it.
export type Unnumbered<M extends ClientMessage = ClientMessage> = M extends ClientMessage ? Omit<M, 'id'> : never;

// The client messages, fields in the order the nes client writes them (the sender adds the id last). Fields left
// undefined are not written.
export const clientMessage = {
    hello(auth: unknown, subs: string[], pulse: HelloRequest['pulse']): Unnumbered<HelloRequest> {

        const hello: Unnumbered<HelloRequest> = { type: 'hello', version };
        if (auth) {
            hello.auth = auth;
        }

        if (subs.length) {
            hello.subs = subs;
        }

        if (pulse) {
            hello.pulse = pulse;
        }

        return hello;
    },
    reauth: (auth: unknown): Unnumbered<ReauthRequest> => ({ type: 'reauth', auth }),
    request: (method: string, path: string, headers: Record<string, string> | undefined, payload: unknown): Unnumbered<TunnelRequest> => ({ type: 'request', method, path, headers, payload }),
    message: (message: unknown): Unnumbered<MessageRequest> => ({ type: 'message', message }),
    sub: (path: string): Unnumbered<SubRequest> => ({ type: 'sub', path }),
    unsub: (path: string): Unnumbered<UnsubRequest> => ({ type: 'unsub', path }),
    ping: (): Unnumbered<PingRequest> => ({ type: 'ping' })
};

// ---- Server to client ----

export interface ErrorFields {
    statusCode?: number;
    payload?: unknown;
    headers?: Record<string, unknown>;
    path?: string;
}

export interface HelloResponse extends ErrorFields {
    type: 'hello';
    id: MessageId;
    heartbeat?: false | { interval: number; timeout: number };
    socket?: string;
    pulse?: HelloExtensions & { positions?: Record<string, Position>; recovered?: Record<string, boolean>; expiresAt?: number; joined?: string[] };
}

export interface ServerResponse extends ErrorFields {
    type: 'reauth' | 'request' | 'message' | 'sub' | 'unsub';
    id: MessageId;
    message?: unknown;
    path?: string;
    pulse?: { expiresAt?: number | null; position?: Position; recovered?: boolean };
}

export interface PingMessage {
    type: 'ping';
}

export interface UpdateMessage {
    type: 'update';
    message: unknown;
}

export interface PubMessage {
    type: 'pub';
    path: string;
    message: unknown;
    position?: Position;
}

export interface RevokeMessage {
    type: 'revoke';
    path: string;
    message?: unknown;
}

// The server subscribed the socket to `path` (groups extension only).
export interface JoinMessage {
    type: 'join';
    path: string;
    pulse?: { position: Position };
}

export interface ExpiringMessage {
    type: 'expiring';
    expiresAt: number;
}

export interface BareError extends ErrorFields {
    type?: undefined;
    id?: undefined;
}

export type ServerMessage = HelloResponse | ServerResponse | PingMessage | UpdateMessage | PubMessage | RevokeMessage | JoinMessage | ExpiringMessage | BareError;

// An error reply as the server builds it: the Boom output (its payload without statusCode), the filtered headers,
// and the type and id of the message it answers, whatever type the client sent.
export interface ErrorReply {
    statusCode: number;
    payload: { error: string; message?: string; [field: string]: unknown };
    headers: Record<string, unknown> | undefined;
    type?: string;
    id?: MessageId;
    path?: string;                                       // the hello subscription that failed
}

// A payload that is JSON text already (a handler's JSON string): encode() places it as is.
export class EncodedPayload {

    constructor(readonly json: string) { }
}

// ---- Limits used by validation (the server may set tighter ones) ----

export const defaultLimits = {
    maxPathLength: 1024,
    maxIdLength: 64,
    maxSubscriptions: 1000,
    maxHeaders: 100,
    maxHeaderLength: 8192,
    maxMethodLength: 32
};

export type Limits = typeof defaultLimits;

// A validation failure: `field` names the offending field, `id` is the message id when it was readable
// so that the error can be correlated by the client.
export class ProtocolError extends Error {

    readonly field: string | undefined;
    readonly type: string | undefined;
    readonly id: MessageId | undefined;

    constructor(message: string, field?: string, type?: string, id?: MessageId) {

        super(message);
        this.name = 'ProtocolError';
        this.field = field;
        this.type = type;
        this.id = id;
    }
}

const methodToken = /^[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*$/;
const headerToken = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;                     // RFC 9110 token

// No lone surrogate: a path that is not well-formed Unicode cannot cross Redis (or any UTF-8 hop) intact.
const loneSurrogate = /\p{Cs}/u;
export const isWellFormed = (value: string): boolean => !loneSurrogate.test(value);

const isObject = (value: unknown): value is Record<string, unknown> => {

    return value !== null && typeof value === 'object' && !Array.isArray(value);
};

// Shared with the client's reading of server frames (outside Check, which the browser bundle leaves out)
const isPosition = (value: unknown): value is Position => {

    return isObject(value) &&
        typeof value.epoch === 'string' && value.epoch.length <= 64 &&
        typeof value.offset === 'number' && Number.isSafeInteger(value.offset) && value.offset >= 0;
};

const notAPosition = (field: string): string => `Message ${field} must be an object with a string epoch and a non-negative integer offset`;

// One message being checked: its type and id, once read, go into every failure so that the server can answer
// the message and the client correlate the answer.
class Check {

    type: string | undefined;
    id: MessageId | undefined;

    constructor(readonly limits: Limits) { }

    fail(field: string, message: string): never {

        throw new ProtocolError(message, field, this.type, this.id);
    }

    path(value: unknown, field: string, routeIdAllowed = false): string {

        if (typeof value !== 'string' || !value.length) {
            return this.fail(field, `Message ${field} must be a non-empty string`);
        }

        if (value.length > this.limits.maxPathLength) {
            return this.fail(field, `Message ${field} is longer than ${this.limits.maxPathLength} characters`);
        }

        if (value[0] !== '/' && !routeIdAllowed) {
            return this.fail(field, `Message ${field} must start with /`);
        }

        if (!isWellFormed(value)) {
            return this.fail(field, `Message ${field} must be well-formed Unicode`);
        }

        return value;
    }

    position(value: unknown, field: string): Position {

        if (!isPosition(value)) {
            return this.fail(field, notAPosition(field));
        }

        return { epoch: value.epoch, offset: value.offset };
    }

    headers(value: unknown): Record<string, string> {

        if (!isObject(value)) {
            return this.fail('headers', 'Message headers must be an object of strings');
        }

        const names = Object.keys(value);
        if (names.length > this.limits.maxHeaders) {
            return this.fail('headers', `Message headers has more than ${this.limits.maxHeaders} fields`);
        }

        const headers: Record<string, string> = {};
        for (const name of names) {
            const field = value[name];
            if (typeof field !== 'string' || field.length > this.limits.maxHeaderLength || !headerToken.test(name) || name === '__proto__') {
                return this.fail('headers', `Message headers.${name.slice(0, 64)} must be a string header`);
            }

            headers[name] = field;
        }

        return headers;
    }

    extensions(value: unknown): NonNullable<HelloRequest['pulse']> {

        if (!isObject(value)) {
            return this.fail('pulse', 'Message pulse must be an object');
        }

        const result: NonNullable<HelloRequest['pulse']> = {};
        if (value.recovery === true) {
            result.recovery = true;
        }

        if (value.expiry === true) {
            result.expiry = true;
        }

        if (value.groups === true) {
            result.groups = true;
        }

        if (value.positions !== undefined) {
            if (!isObject(value.positions)) {
                return this.fail('pulse.positions', 'Message pulse.positions must be an object');
            }

            const paths = Object.keys(value.positions);
            if (paths.length > this.limits.maxSubscriptions) {
                return this.fail('pulse.positions', `Message pulse.positions has more than ${this.limits.maxSubscriptions} paths`);
            }

            result.positions = {};
            for (const path of paths) {
                this.path(path, 'pulse.positions');
                result.positions[path] = this.position(value.positions[path], 'pulse.positions');
            }
        }

        return result;
    }
}

// Parses one complete client frame and checks every field the server will read.
// Throws ProtocolError naming the field; never returns a partially valid message.
export const parseClientMessage = (text: string, limits: Limits = defaultLimits): ClientMessage => {

    let raw: unknown;
    try {
        raw = JSON.parse(text);
    }
    catch {
        throw new ProtocolError('Cannot parse message');
    }

    return validateClientMessage(raw, limits);
};

export const validateClientMessage = (raw: unknown, limits: Limits = defaultLimits): ClientMessage => {

    if (!isObject(raw)) {
        throw new ProtocolError('Cannot parse message');
    }

    const check = new Check(limits);
    const type = raw.type;
    if (typeof type !== 'string' || !type) {
        check.id = typeof raw.id === 'number' || typeof raw.id === 'string' ? raw.id : undefined;
        return check.fail('type', 'Cannot parse message');
    }

    check.type = type;
    const rawId = raw.id;
    if (rawId === undefined || rawId === null || rawId === '' || rawId === 0) {
        return check.fail('id', 'Message missing id');
    }

    if (typeof rawId === 'number' ? !Number.isSafeInteger(rawId) : typeof rawId !== 'string' || rawId.length > limits.maxIdLength) {
        return check.fail('id', 'Message id must be an integer or a short string');
    }

    const id = check.id = rawId as MessageId;

    switch (type) {
        case 'ping':
            return { type, id };

        case 'hello': {
            if (typeof raw.version !== 'string') {
                const received = raw.version === undefined ? 'none' : String(raw.version);
                return check.fail('version', `Incorrect protocol version (expected ${version} but received ${received})`);
            }

            const hello: HelloRequest = { type, id, version: raw.version };
            if (raw.auth !== undefined && raw.auth !== null) {
                hello.auth = raw.auth;
            }

            if (raw.subs !== undefined) {
                if (!Array.isArray(raw.subs) || raw.subs.length > limits.maxSubscriptions) {
                    return check.fail('subs', `Message subs must be an array of at most ${limits.maxSubscriptions} paths`);
                }

                hello.subs = raw.subs.map((path) => check.path(path, 'subs'));
            }

            if (raw.pulse !== undefined) {
                hello.pulse = check.extensions(raw.pulse);
            }

            return hello;
        }

        case 'reauth':
            if (raw.auth === undefined || raw.auth === null) {
                return check.fail('auth', 'Message missing auth');
            }

            return { type, id, auth: raw.auth };

        case 'request': {
            const method = raw.method;
            if (typeof method !== 'string' || !method) {
                return check.fail('method', 'Message missing method');
            }

            if (method.length > limits.maxMethodLength || !methodToken.test(method)) {
                return check.fail('method', 'Message method must be an HTTP method token');
            }

            if (raw.path === undefined || raw.path === null || raw.path === '') {
                return check.fail('path', 'Message missing path');
            }

            const request: TunnelRequest = { type, id, method, path: check.path(raw.path, 'path', true) };
            if (raw.headers !== undefined && raw.headers !== null) {
                request.headers = check.headers(raw.headers);
            }

            if (raw.payload !== undefined) {
                request.payload = raw.payload;
            }

            return request;
        }

        case 'message':
            return { type, id, message: raw.message };

        case 'sub': {
            const sub: SubRequest = { type, id, path: check.path(raw.path, 'path') };
            if (raw.position !== undefined) {
                sub.position = check.position(raw.position, 'position');
            }

            return sub;
        }

        case 'unsub':
            return { type, id, path: check.path(raw.path, 'path') };

        default:
            return check.fail('type', 'Unknown message type');
    }
};

// ---- Server frames, as read by the client ----

export const validateServerMessage = (raw: unknown): ServerMessage => {

    if (!isObject(raw)) {
        throw new ProtocolError('Received a message that is not an object');
    }

    if (raw.type !== undefined && typeof raw.type !== 'string') {
        throw new ProtocolError('Received a message with an invalid type', 'type');
    }

    if (raw.statusCode !== undefined && typeof raw.statusCode !== 'number') {
        throw new ProtocolError('Received a message with an invalid statusCode', 'statusCode');
    }

    if ((raw.type === 'pub' || raw.type === 'revoke' || raw.type === 'join') && typeof raw.path !== 'string') {
        throw new ProtocolError(`Received a ${raw.type} message without a path`, 'path');
    }

    if (raw.position !== undefined && !isPosition(raw.position)) {
        throw new ProtocolError(notAPosition('position'), 'position');
    }

    if (raw.type === 'join' && raw.pulse !== undefined) {
        if (!isObject(raw.pulse)) {
            throw new ProtocolError('Received a join message with an invalid pulse', 'pulse');
        }

        if (!isPosition(raw.pulse.position)) {
            throw new ProtocolError(notAPosition('pulse.position'), 'pulse.position');
        }
    }

    return raw as unknown as ServerMessage;
};

// ---- Encoding ----

// Every message the server sends goes through here, the hand-built `pub` fast path aside (server/prepared.ts,
// tested equal to this). Throws what JSON.stringify throws (a cycle, a BigInt). A request payload or a pub
// message that is an EncodedPayload (JSON already) goes in as it is.
export const encode = (message: ServerMessage | ErrorReply): string => {

    if (message.type === 'request' && message.payload instanceof EncodedPayload) {
        const { type, id, statusCode, payload, headers } = message;
        const head = JSON.stringify({ type, id, statusCode });
        return head.slice(0, -1) + ',"payload":' + payload.json + (headers ? ',"headers":' + JSON.stringify(headers) : '') + '}';
    }

    if (message.type === 'pub' && (message as PubMessage).message instanceof EncodedPayload) {
        const { type, path, message: payload, position } = message as PubMessage;
        const head = JSON.stringify({ type, path });
        return head.slice(0, -1) + ',"message":' + (payload as EncodedPayload).json + (position ? ',"position":' + JSON.stringify(position) : '') + '}';
    }

    return JSON.stringify(message);
};

// Splits an encoded message into nes chunks: '+' parts then a final '!' part.
export const chunk = (encoded: string, maxChunkChars: number): string[] => {

    const parts: string[] = [];
    for (let start = 0; start < encoded.length; start += maxChunkChars) {
        const end = start + maxChunkChars;
        parts.push((end >= encoded.length ? '!' : '+') + encoded.slice(start, end));
    }

    return parts;
};

// Reassembles chunks on the receiving side, bounded so that an endless stream cannot grow memory.
export class ChunkAssembler {

    private parts: string[] = [];
    private length = 0;

    constructor(private readonly maxChars: number) { }

    get pending(): boolean {

        return this.parts.length > 0;
    }

    // Returns the complete message, or null while waiting for more parts. Throws on overflow.
    push(frame: string): string | null {

        const prefix = frame[0];
        if (prefix !== '+' && prefix !== '!') {
            if (this.parts.length) {
                this.reset();
                throw new ProtocolError('Received an incomplete message');
            }

            return frame;
        }

        this.length += frame.length - 1;
        if (this.length > this.maxChars) {
            this.reset();
            throw new ProtocolError(`Chunked message exceeds ${this.maxChars} characters`);
        }

        this.parts.push(frame.slice(1));
        if (prefix === '+') {
            return null;
        }

        const message = this.parts.join('');
        this.reset();
        return message;
    }

    reset(): void {

        this.parts = [];
        this.length = 0;
    }
}

// ---- Presence (protocol.md, "Presence") ----
// The members of a path whose subscription has presence are followed through an ordinary subscription to a
// derived path: the source path behind this prefix. Its pub messages carry a PresenceMessage: first the whole
// list, then at most one diff per batch interval. Members are keyed by an opaque id (never the user itself);
// `info` is what the server's info(credentials) returned; anonymous sockets are counted, never listed.

export const presencePrefix = '/$presence';

export const presencePath = (path: string): string => presencePrefix + path;

export interface PresenceMember<Info = unknown> {
    id: string;
    info: Info;
}

export interface PresenceList<Info = unknown> {
    presence: 'list';
    members: PresenceMember<Info>[];
    anonymous: number;
}

export interface PresenceDiff<Info = unknown> {
    presence: 'diff';
    joins: PresenceMember<Info>[];
    updates: PresenceMember<Info>[];
    leaves: string[];
    anonymous: number;
}

export type PresenceMessage<Info = unknown> = PresenceList<Info> | PresenceDiff<Info>;

// The message of a presence pub whose infos are JSON already (as the server keeps them), for encode(): the text
// JSON.stringify gives for the same message with each info parsed (test/wire.ts compares them byte for byte),
// made without parsing any info. Built once per list or diff, whatever the number of followers.
export const presenceJson = (message: PresenceMessage<EncodedPayload>): EncodedPayload => {

    const members = (list: PresenceMember<EncodedPayload>[]): string => {

        let json = '[';
        for (let i = 0; i < list.length; ++i) {
            const member = list[i]!;
            json += (i ? ',{"id":' : '{"id":') + JSON.stringify(member.id) + ',"info":' + member.info.json + '}';
        }

        return json + ']';
    };

    const anonymous = JSON.stringify(message.anonymous);
    if (message.presence === 'list') {
        return new EncodedPayload('{"presence":"list","members":' + members(message.members) + ',"anonymous":' + anonymous + '}');
    }

    return new EncodedPayload('{"presence":"diff","joins":' + members(message.joins) + ',"updates":' + members(message.updates) + ',"leaves":' + JSON.stringify(message.leaves) + ',"anonymous":' + anonymous + '}');
};
