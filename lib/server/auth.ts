// Connection authentication: the auth endpoint (direct / cookie / token) and turning what a client
// presents (hello auth, reauth auth, the upgrade cookie) into socket credentials.

import * as Boom from '@hapi/boom';
import * as Iron from '@hapi/iron';
import type { Request, ResponseToolkit, Server } from '@hapi/hapi';

import type { AuthSettings } from '../settings';

export type { AuthSettings };

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
export const isRequired = (server: Server, config: AuthSettings): boolean => {

    const route = server.lookup(config.id)!;                // registered by registerEndpoint()
    const auth = (server.auth as unknown as { lookup(route: unknown): { mode: string } | null }).lookup(route);
    return auth?.mode === 'required';
};

// Credentials from what the client sent in hello / reauth.
export const fromClient = async (server: Server, config: AuthSettings, auth: unknown, remoteAddress: string, forwardedFor: string | undefined): Promise<Authenticated | null> => {

    if (config.type === 'direct') {
        const headers = readHeaders(auth);
        if (forwardedFor !== undefined) {
            headers['x-forwarded-for'] = forwardedFor;
        }

        const route = server.lookup(config.id)!;
        const res = await server.inject({ url: route.path, method: 'auth', headers, remoteAddress, allowInternals: true, validate: false });
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
