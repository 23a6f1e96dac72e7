// Connection authentication: the auth endpoint (direct / cookie / token), turning what a client presents
// (hello auth, reauth auth, the upgrade cookie) into socket credentials, their expiry, and re-verifying them.

import * as Boom from '@hapi/boom';
import * as Iron from '@hapi/iron';
import type { AuthArtifacts, Request, ResponseToolkit, Server } from '@hapi/hapi';

import { CloseCode } from '../protocol';
import type { AuthSettings } from '../settings';
import type { Tunnel } from './tunnel';

export type { AuthSettings };

export interface SocketAuth {
    isAuthenticated: boolean;
    credentials: Record<string, any> | null;
    artifacts: AuthArtifacts | null;
    strategy?: string;
}

// What a successful authentication yields, as stored in cookies and tokens.
export interface Authenticated {
    credentials: Record<string, any>;
    artifacts?: unknown;
    strategy?: string;
    expiresAt?: number;
}

export const registerEndpoint = (server: Server, config: AuthSettings): void => {

    if (config.type === 'cookie') {
        server.state(config.cookie, {
            isSecure: config.isSecure,
            isHttpOnly: config.isHttpOnly,
            isSameSite: config.isSameSite,
            path: config.path,
            domain: config.domain,
            ttl: config.ttl,
            encoding: 'iron',
            password: config.password,
            iron: config.iron
        });
    }

    server.route({
        method: (config.type === 'direct' ? 'auth' : 'GET') as 'GET',           // 'auth' is hapi's internal-only method
        path: config.endpoint,
        options: {
            id: config.id,
            isInternal: config.type === 'direct',
            auth: config.route,
            handler: async (request: Request, h: ResponseToolkit) => {

                // Never through the tunnel, whatever path spelling ('/x/../nes/auth', '/nes/%61uth') routed here.
                if (request.plugins.nes?.socket) {
                    throw Boom.notFound();
                }

                if (!request.auth.isAuthenticated) {
                    return { status: 'unauthenticated' };
                }

                const authenticated: Authenticated = {
                    credentials: request.auth.credentials as Record<string, any>,
                    artifacts: request.auth.artifacts,
                    strategy: request.auth.strategy
                };

                if (config.type === 'direct') {
                    return authenticated;
                }

                // Sealed credentials expire with the cookie / token ttl, not later.
                if (config.ttl) {
                    authenticated.expiresAt = Date.now() + config.ttl;
                }

                if (config.type === 'cookie') {
                    return h.response({ status: 'authenticated' }).state(config.cookie, authenticated);
                }

                const token = await Iron.seal(authenticated, config.password, { ...(config.iron ?? Iron.defaults), ttl: config.ttl ?? 0 });
                return { status: 'authenticated', token };
            }
        }
    });
};

// Whether a connection must authenticate: the auth endpoint's own route auth decides (as in nes).
const isRequired = (server: Server, config: AuthSettings): boolean => {

    const route = server.lookup(config.id)!;                // registered by registerEndpoint()
    const auth = (server.auth as unknown as { lookup(route: unknown): { mode: string } | null }).lookup(route);
    return auth?.mode === 'required';
};

// Credentials from what the client sent in hello / reauth. Direct auth headers go to the auth endpoint as a
// tunnelled request's would: the connection's own host, address and cookies, not ones the client names.
const fromClient = async (server: Server, config: AuthSettings, auth: unknown, socket: Credentialed, tunnel: RequestHeaders): Promise<Authenticated | null> => {

    if (config.type === 'direct') {
        const headers = tunnel.requestHeaders(socket.upgradeHeaders, readHeaders(auth));
        const route = server.lookup(config.id)!;
        const res = await server.inject({ url: route.path, method: 'auth', headers, remoteAddress: socket.info.remoteAddress, allowInternals: true, validate: false });
        const result = res.result as { credentials?: Record<string, any>; message?: string } | null;
        if (res.statusCode !== 200) {
            throw Boom.unauthorized(result?.message);
        }

        if (!result?.credentials) {
            return null;
        }

        return result as Authenticated;
    }

    if (typeof auth !== 'string') {
        throw Boom.unauthorized('Invalid token');
    }

    let unsealed: Authenticated;
    try {
        unsealed = await Iron.unseal(auth, config.password, config.iron ?? Iron.defaults) as Authenticated;
    }
    catch {
        throw Boom.unauthorized('Invalid token');
    }

    return unexpired(unsealed, 'Invalid token');
};

// Sealed credentials past their expiresAt are refused (cookies carry no iron ttl: the browser's max-age is advisory).
const unexpired = (authenticated: Authenticated, message: string): Authenticated => {

    if (!authenticated || typeof authenticated !== 'object' || !authenticated.credentials || typeof authenticated.credentials !== 'object') {
        throw Boom.unauthorized(message);                    // sealed with our password, but not by us (a shared password)
    }

    if (typeof authenticated.expiresAt === 'number' && authenticated.expiresAt <= Date.now()) {
        throw Boom.unauthorized(message);
    }

    return authenticated;
};

// Credentials from the sealed cookie sent with the upgrade request.
// Only for cookie auth, and only the auth cookie is read: other cookies (malformed, or a sibling
// subdomain's) never matter.
export const fromCookie = async (config: AuthSettings, cookies: string | undefined): Promise<Authenticated | null> => {

    const sealed = config.type === 'cookie' ? cookieValue(cookies, config.cookie) : null;
    if (sealed === null) {
        return null;
    }

    let state: Authenticated;
    try {
        state = await Iron.unseal(sealed, config.password, config.iron ?? Iron.defaults) as Authenticated;
    }
    catch {
        throw Boom.unauthorized('Invalid nes authentication cookie');
    }

    return (state as Authenticated | null)?.credentials ? unexpired(state, 'Invalid nes authentication cookie') : null;
};

// The first value of cookie `name` in a Cookie header.
const cookieValue = (header: string | undefined, name: string): string | null => {

    for (const pair of header?.split(';') ?? []) {
        const at = pair.indexOf('=');
        if (at !== -1 && pair.slice(0, at).trim() === name) {
            return pair.slice(at + 1).trim();
        }
    }

    return null;
};

// Never null: the protocol parser drops a null hello auth and refuses a reauth without auth.
const readHeaders = (auth: unknown): Record<string, string> => {

    const headers: Record<string, string> = {};
    if (typeof auth !== 'object' || Array.isArray(auth)) {
        throw Boom.unauthorized('Direct authentication must be an object with headers');
    }

    const given = (auth as { headers?: unknown }).headers;
    if (given === undefined) {
        return headers;
    }

    if (given === null || typeof given !== 'object' || Array.isArray(given)) {
        throw Boom.unauthorized('Direct authentication headers must be an object of strings');
    }

    for (const [name, value] of Object.entries(given)) {
        if (typeof value !== 'string') {
            throw Boom.unauthorized('Direct authentication headers must be an object of strings');
        }

        headers[name] = value;
    }

    return headers;
};

type RequestHeaders = Pick<Tunnel, 'requestHeaders'>;

// What authentication reads and sets on a socket.
export interface Credentialed {
    readonly auth: SocketAuth;
    readonly authenticated: boolean;            // auth.isAuthenticated, without making socket.auth
    readonly info: { remoteAddress: string };
    readonly upgradeHeaders: Readonly<Record<string, string>>;
    user: string | null;
    credentialsVersion: number;                 // counts credential changes (hello, reauth)
    identityVersion: number;                    // counts changes of user or strategy
    verifiedAt: number;
    verifying: Promise<boolean> | null;         // a credential check under way: every message waits for it
    expireAt(expiresAt: number | null, notice: number): void;
    close(code: number, reason: string): void;
}

// The user index, kept by the listener.
export interface UserIndex<S extends Credentialed> {
    count(user: string): number;
    full(): void;                                          // maxConnectionsPerUser refused a socket
    // Applies a change of credentials: the socket leaves its user's indexes before `apply`, and is indexed
    // under `indexed` after (null: not indexed).
    rekey(socket: S, indexed: string | null, apply: () => void): void;
}

// The key a user is indexed and targeted under: as in nes, any truthy user, so 42 and '42' are one user
// (and the same on every node, where envelopes carry it as a string).
export const userKey = (user: unknown): string | null => {

    if (typeof user === 'string') {
        return user || null;
    }

    return typeof user === 'number' && user !== 0 && Number.isFinite(user) ? String(user) : null;
};

export class Authenticator<S extends Credentialed> {

    private required: boolean | null = null;

    constructor(private readonly server: Server, readonly config: AuthSettings | false, private readonly users: UserIndex<S>, private readonly tunnel: RequestHeaders) { }

    // Whether a connection must authenticate: read once, after every route is registered.
    private isRequired(config: AuthSettings): boolean {

        return (this.required ??= isRequired(this.server, config));
    }

    // A hello (or a reauth, which always carries its credentials): sets the socket's credentials, or throws.
    async authenticate(socket: S, auth: unknown, isReauth: boolean): Promise<void> {

        const config = this.config;
        if (!config) {
            if (auth !== undefined) {                          // the parser turns a null hello auth into none
                throw Boom.badRequest('Authentication is not enabled');
            }

            return;
        }

        let authenticated = isReauth ? null : await fromCookie(config, socket.upgradeHeaders.cookie);   // a reauth carries its credentials
        if (authenticated && auth !== undefined) {
            throw Boom.badRequest('Connection already authenticated');
        }

        if (auth !== undefined) {
            authenticated = await fromClient(this.server, config, auth, socket, this.tunnel);
        }

        if (!authenticated) {
            if (isReauth) {                                    // a reauth always carries auth (the parser checks)
                throw Boom.unauthorized('Reauthentication yielded no credentials');
            }

            if (this.isRequired(config)) {                     // a hello: the socket has no credentials yet
                throw Boom.unauthorized('Connection requires authentication');
            }

            return;
        }

        this.setCredentials(config, socket, authenticated);
    }

    private setCredentials(config: AuthSettings, socket: S, authenticated: Authenticated): void {

        const expiresAt = expiryOf(config, authenticated);
        if (expiresAt !== null && expiresAt <= Date.now()) {
            throw Boom.unauthorized('Credentials expired');
        }

        const user = userKey(authenticated.credentials.user);
        const indexed = config.index ? user : null;
        if (indexed !== null && indexed !== socket.user && config.maxConnectionsPerUser && this.users.count(indexed) >= config.maxConnectionsPerUser) {
            this.users.full();
            throw Boom.serverUnavailable('Too many connections for the authenticated user');
        }

        if (socket.auth.isAuthenticated && (user !== socket.user || authenticated.strategy !== socket.auth.strategy)) {
            ++socket.identityVersion;
        }

        ++socket.credentialsVersion;
        this.users.rekey(socket, indexed, () => {

            socket.auth.isAuthenticated = true;
            socket.auth.credentials = authenticated.credentials;
            socket.auth.artifacts = authenticated.artifacts as AuthArtifacts | null;       // as the strategy returned them (nes types them so)
            socket.auth.strategy = authenticated.strategy;
            socket.user = user;
        });

        socket.verifiedAt = Date.now();
        socket.expireAt(expiresAt, config.expiryNotice);
    }

    // Re-checks credentials with the auth strategy (server.auth.verify) once per minAuthVerifyInterval.
    // Resolves false when they no longer verify (or the strategy did not answer within verifyTimeout); the
    // caller tells the client and closes. Every message that arrives while a check is pending waits for it.
    // recheck() forces it: credentials that stop verifying are caught within one interval, not two.
    // Synchronous `true` when no check is due, so that most messages pay no await for it.
    verify(socket: Credentialed, force = false): true | Promise<boolean> {

        const interval = this.config ? this.config.minAuthVerifyInterval : false;
        if (!interval || !socket.authenticated) {
            return true;
        }

        if (socket.verifying) {
            return socket.verifying;
        }

        if (!force && Date.now() - socket.verifiedAt < interval) {
            return true;
        }

        const credentials = socket.auth.credentials;
        const check = this.verifyWithin(socket, (this.config as AuthSettings).verifyTimeout).then((verified) => {

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

    private verifyWithin(socket: Credentialed, timeout: number): Promise<boolean> {

        let timer: NodeJS.Timeout;
        const expired = new Promise<boolean>((resolve) => {

            timer = setTimeout(() => resolve(false), timeout);
        });

        const verified = this.server.auth.verify(socket as any).then(() => true, () => false);
        return Promise.race([verified, expired]).finally(() => clearTimeout(timer));
    }

    // Once per interval for each authenticated socket (the listener spreads these over the interval), whatever
    // its messages: a failing check closes it. A slow strategy delays revocation by one verify latency.
    recheck(socket: S): void {

        // Only authenticated sockets are rechecked: verify() always checks, and settles to a boolean.
        void Promise.resolve(this.verify(socket, true)).then((ok) => ok || socket.close(CloseCode.authExpired, 'Credential verification failed'));
    }
}

// The earlier of the sealed token / cookie ttl and auth.expiry(credentials) (default: credentials.expiresAt).
const expiryOf = (config: AuthSettings, authenticated: Authenticated): number | null => {

    const candidates = [authenticated.expiresAt, config.expiry ? config.expiry(authenticated.credentials) : authenticated.credentials.expiresAt];
    const times = candidates.filter((value): value is number => typeof value === 'number' && Number.isFinite(value));
    return times.length ? Math.min(...times) : null;
};
