// Subscription routing: the route table (@hapi/call) that authorises a path, and the per-path
// subscriber sets that make a publish cost O(recipients of that exact path).

import * as Boom from '@hapi/boom';
import * as Hoek from '@hapi/hoek';
import { Router } from '@hapi/call';
import type { Server } from '@hapi/hapi';

import type { HistoryOptions, PresenceStore, PublishEnvelope } from '../broker';
import { presencePrefix } from '../protocol';
import { forget } from './catchup';
import { Presence, presenceSettings } from './presence';
import type { Admission, PresenceOptions, PresenceSettings } from './presence';
import { Prepared } from './prepared';
import type { Connection, Socket } from './socket';

export type FilterResult = boolean | { override: unknown };

const programmerErrors = [EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError];

const isProgrammerError = (err: unknown): boolean => {

    return programmerErrors.some((type) => err instanceof type) || (err as { code?: unknown } | null)?.code === 'ERR_ASSERTION';
};

// Internal: what the publisher passed as `internal` (undefined when it passed nothing).
export interface FilterOptions<Internal = unknown> {
    socket: Socket;
    credentials: Record<string, any> | null;
    params: Record<string, string>;
    internal: Internal | undefined;
}

// Message and Internal type the filter's arguments when the application names them (any, as in nes, otherwise).
export interface SubscriptionOptions<Message = any, Internal = unknown> {
    filter?: (path: string, message: Message, options: FilterOptions<Internal>) => FilterResult | Promise<FilterResult>;
    onSubscribe?: (socket: Socket, path: string, params: Record<string, string>) => void | Promise<void>;
    onUnsubscribe?: (socket: Socket, path: string, params: Record<string, string>) => void | Promise<void>;
    auth?: false | {
        mode?: 'required' | 'optional';
        scope?: string | string[];
        entity?: 'user' | 'app' | 'any';
        index?: boolean;
    };
    history?: false | { size?: number; ttl?: number };
    presence?: boolean | PresenceOptions;
}

export interface SubscriptionRoute {
    pattern: string;
    filter: SubscriptionOptions['filter'];
    onSubscribe: SubscriptionOptions['onSubscribe'];
    onUnsubscribe: SubscriptionOptions['onUnsubscribe'];
    auth: null | {
        mode: 'required' | 'optional';
        scope: string[] | null;
        scopeHasParams: boolean;
        entity: 'user' | 'app' | 'any';
        index: boolean;
    };
    history: HistoryOptions | null;
    presence: PresenceSettings | null;
    follow: SubscriptionRoute | null;                   // presence: the route of the derived path
    source: SubscriptionRoute | null;                   // on the route of a derived path: the route it follows
}

// All local subscribers of one concrete path.
export class Topic {

    readonly sockets = new Set<Connection>();
    byUser: Map<string, Set<Connection>> | null = null;
    pending: Promise<void> | null = null;               // a filtered delivery still waiting on async filters
    ready: Promise<void> | null = null;                 // the broker subscription of a new path, until it is confirmed

    private readonly knownParams: Record<string, string> | null;

    // Filters, onUnsubscribe and scopes naming {params} read the path's params: kept for those routes only. The
    // others (most) work them out again if ever asked, rather than hold an object for every path.
    constructor(readonly path: string, readonly route: SubscriptionRoute, params: Record<string, string>, private readonly lookup: (path: string) => Record<string, string>) {

        this.knownParams = route.filter || route.onUnsubscribe || route.auth?.scopeHasParams ? params : null;
        if (route.auth?.index) {
            this.byUser = new Map();
        }
    }

    get params(): Record<string, string> {

        return this.knownParams ?? this.lookup(this.path);
    }

    add(socket: Connection): void {

        this.sockets.add(socket);
        const user = socket.user;
        if (this.byUser && user !== null) {
            let set = this.byUser.get(user);
            if (!set) {
                set = new Set();
                this.byUser.set(user, set);
            }

            set.add(socket);
        }
    }

    delete(socket: Connection): void {

        this.sockets.delete(socket);
        const user = socket.user;
        if (this.byUser && user !== null) {
            const set = this.byUser.get(user)!;                  // add() put it there; user changes go through reindex()
            set.delete(socket);
            if (!set.size) {
                this.byUser.delete(user);
            }
        }
    }

    recipients(user: string | undefined): Iterable<Connection> {

        if (user === undefined) {
            return this.sockets;
        }

        return this.byUser?.get(user) ?? [];
    }
}

const subscriptionSchemaKeys = ['filter', 'onSubscribe', 'onUnsubscribe', 'auth', 'history', 'presence'];

export interface SubscriptionsHooks {
    firstSubscriber(path: string, history: HistoryOptions | null): Promise<void>;
    confirmed(path: string): Promise<void> | null;
    lastSubscriberGone(path: string): void;
    presenceStore: PresenceStore | undefined;
    nodeStats(): { sockets: number; users: number };
}

export class Subscriptions {

    readonly topics = new Map<string, Topic>();
    private readonly watched = new WeakMap<PublishEnvelope, { error?: unknown }>();
    private readonly router = new Router<SubscriptionRoute>();
    private readonly patterns = new Set<string>();
    readonly presence: Presence;

    private readonly paramsOf = (path: string): Record<string, string> => this.match(path)!.params;     // a topic's path always matches

    constructor(private readonly server: Server, private readonly hooks: SubscriptionsHooks) {

        this.presence = new Presence(server, hooks.presenceStore, hooks.nodeStats);
    }

    add(pattern: string, options: SubscriptionOptions = {}): void {

        Hoek.assert(typeof pattern === 'string' && pattern[0] === '/', 'Subscription path must be a string starting with /');
        Hoek.assert(!pattern.startsWith(presencePrefix), `Subscription path cannot start with ${presencePrefix} (reserved for presence):`, pattern);
        Hoek.assert(!this.patterns.has(pattern), 'Subscription already exists:', pattern);
        Hoek.assert(options && typeof options === 'object', 'Invalid subscription options:', pattern);
        for (const key of Object.keys(options)) {
            Hoek.assert(subscriptionSchemaKeys.includes(key), `Invalid subscription options: ${pattern} ("${key}" is not allowed)`);
        }

        for (const key of ['filter', 'onSubscribe', 'onUnsubscribe'] as const) {
            Hoek.assert(options[key] === undefined || typeof options[key] === 'function', `Invalid subscription options: ${pattern} ("${key}" must be a function)`);
        }

        const route: SubscriptionRoute = {
            pattern,
            filter: options.filter,
            onSubscribe: options.onSubscribe,
            onUnsubscribe: options.onUnsubscribe,
            auth: null,
            history: null,
            presence: null,
            follow: null,
            source: null
        };

        Hoek.assert(options.auth === undefined || options.auth === false || (typeof options.auth === 'object' && options.auth !== null && !Array.isArray(options.auth)), `Invalid subscription options: ${pattern} (auth must be an object or false)`);
        if (options.auth) {
            const { mode = 'required', scope, entity = 'any', index = false } = options.auth;
            Hoek.assert(['required', 'optional'].includes(mode), `Invalid subscription options: ${pattern} (auth.mode must be required or optional)`);
            Hoek.assert(['user', 'app', 'any'].includes(entity), `Invalid subscription options: ${pattern} (auth.entity must be user, app or any)`);
            const scopes = scope === undefined ? null : [scope].flat();
            Hoek.assert(!scopes || (scopes.length && scopes.every((item) => typeof item === 'string')), `Invalid subscription options: ${pattern} (auth.scope must be strings)`);
            route.auth = {
                mode,
                scope: scopes,
                scopeHasParams: !!scopes?.some((item) => /{([^}]+)}/.test(item)),
                entity,
                index: !!index
            };
        }

        if (options.history) {
            const { size = 100, ttl = 5 * 60 * 1000 } = options.history;
            Hoek.assert(Number.isInteger(size) && size > 0 && Number.isInteger(ttl) && ttl > 0, `Invalid subscription options: ${pattern} (history.size and history.ttl must be positive integers)`);
            route.history = { size, ttl };
        }

        if (options.presence) {
            route.presence = presenceSettings(pattern, options.presence);
            this.presence.register(pattern, route.presence);
            route.follow = { ...route, pattern: presencePrefix + pattern, filter: undefined, onSubscribe: route.presence.onFollow, onUnsubscribe: undefined, history: null, presence: null, follow: null, source: route };
        }

        this.router.add({ method: 'sub', path: pattern }, route);
        this.patterns.add(pattern);
    }

    // A derived path (presence of a source path) takes the auth of the route of its source.
    match(path: string): { route: SubscriptionRoute; params: Record<string, string> } | null {

        const derived = path.startsWith(presencePrefix + '/');
        const match = this.router.route('sub', derived ? path.slice(presencePrefix.length) : path);
        if (match.isBoom) {
            return null;
        }

        if (derived) {
            return match.route.follow ? { route: match.route.follow, params: match.params } : null;
        }

        return { route: match.route, params: match.params };
    }

    // Subscription errors carry the path so that a failing hello can name it.
    async subscribe(socket: Connection, path: string): Promise<void> {

        if (path.indexOf('?') !== -1) {
            throw Boom.badRequest('Subscription path cannot contain query');
        }

        if (socket.subscriptions.has(path)) {
            return;
        }

        const match = this.match(path);
        if (!match) {
            throw Boom.notFound('Subscription not found');
        }

        const { route, params } = match;
        this.authorize(socket, route, params);

        let admission: Admission | null = null;
        if (route.onSubscribe || route.presence) {
            const { credentialsVersion, identityVersion } = socket;
            await route.onSubscribe?.(socket, path, params);
            if (route.presence) {
                admission = await this.presence.admit(socket, path, route.presence);
            }

            // A reauth while onSubscribe ran: the subscription must hold for the credentials now current.
            if (socket.identityVersion !== identityVersion) {
                throw Boom.forbidden('Credentials changed while subscribing');
            }

            if (socket.credentialsVersion !== credentialsVersion) {
                this.authorize(socket, route, params);
            }
        }

        if (!socket.isOpen()) {                                            // closed while onSubscribe ran
            return;
        }

        let topic = this.topics.get(path);
        if (!topic) {
            topic = new Topic(path, route, params, this.paramsOf);
            this.topics.set(path, topic);
            if (route.source) {
                this.presence.open(topic, path, route.source.presence!);
            }

            topic.ready = this.hooks.firstSubscriber(path, route.history);
        }

        topic.add(socket);
        socket.subscriptions.set(path, topic);
        if (admission) {
            this.presence.join(socket, path, admission);                // undone by the unsubscribe below if the broker fails
        }

        // Every subscriber waits until the broker has the path (a new one, or one whose broker subscription is
        // being restored): a sub reply promises delivery.
        const ready = topic.ready ?? this.hooks.confirmed(path);
        if (ready) {
            try {
                await ready;
                if (topic.ready === ready) {
                    topic.ready = null;
                }
            }
            catch (err) {
                await this.unsubscribe(socket, path);
                throw err;
            }
        }

        if (route.source) {
            try {
                await this.presence.follow(socket, topic, path);
            }
            catch (err) {
                await this.unsubscribe(socket, path);
                throw err;
            }
        }
    }

    // After a reauth that kept the identity (and the revokes of what it may no longer hold): presence info computed
    // again; the presence paths where the socket, anonymous until now, was refused as a member (to revoke).
    async reauthenticated(socket: Connection): Promise<string[]> {

        const refused: string[] = [];
        for (const topic of [...socket.subscriptions.values()]) {
            if (topic.route.presence && !await this.presence.reauthenticated(socket, topic.path, topic.route.presence)) {
                refused.push(topic.path);
            }
        }

        return refused;
    }

    // After a reauth: the subscriptions the new credentials may no longer hold.
    unauthorized(socket: Connection): string[] {

        const lost: string[] = [];
        for (const topic of socket.subscriptions.values()) {
            try {
                this.authorize(socket, topic.route, topic.params);
            }
            catch {
                lost.push(topic.path);
            }
        }

        return lost;
    }

    async unsubscribe(socket: Connection, path: string): Promise<void> {

        const topic = socket.subscriptions.get(path);
        if (!topic) {
            return;
        }

        this.detach(socket, topic);
        await this.notifyUnsubscribe(socket, topic);
    }

    // Socket closed: drop it from every topic first, then tell the application.
    async removeSocket(socket: Connection): Promise<void> {

        const topics = [...socket.subscriptions.values()];
        for (const topic of topics) {
            this.detach(socket, topic);
        }

        for (const topic of topics) {
            await this.notifyUnsubscribe(socket, topic);
        }
    }

    // Called by the listener when a socket's user changes while subscribed (reauth as someone else).
    reindex(socket: Connection, apply: () => void): void {

        const topics = [...socket.subscriptions.values()].filter((topic) => topic.byUser);
        for (const topic of topics) {
            topic.delete(socket);
        }

        apply();
        for (const topic of topics) {
            topic.add(socket);
        }
    }

    history(path: string): HistoryOptions | null {

        return this.match(path)?.route.history ?? null;
    }

    // Hot path: one encoded frame for every recipient that gets the plain message.
    deliver(envelope: PublishEnvelope): void | Promise<void> {

        const topic = this.topics.get(envelope.path);
        if (!topic) {
            return;
        }

        if (topic.route.source) {
            return this.presence.receive(envelope);                     // a presence change: batched for the followers
        }

        const pub = preparePub(envelope, envelope.message);
        if (!topic.route.filter) {
            for (const socket of recipients(topic, envelope)) {
                socket.deliver(pub);
            }

            return;
        }

        return this.deliverFiltered(topic, envelope, pub);
    }

    // Filters may be async; a topic whose filter went async queues later publishes behind it so that
    // every socket still sees the publishes of a path in order.
    private deliverFiltered(topic: Topic, envelope: PublishEnvelope, pub: Prepared): void | Promise<void> {

        if (topic.pending) {
            const run = () => this.filterAndSend(topic, envelope, pub);
            return this.track(topic, topic.pending.then(run, run));
        }

        const result = this.filterAndSend(topic, envelope, pub);
        return result && this.track(topic, result);
    }

    private track(topic: Topic, work: Promise<void>): Promise<void> {

        topic.pending = work;
        return work.finally(() => {

            if (topic.pending === work) {
                topic.pending = null;
            }
        });
    }

    private filterAndSend(topic: Topic, envelope: PublishEnvelope, pub: Prepared): void | Promise<void> {

        const filter = topic.route.filter!;
        const sockets = [...recipients(topic, envelope)];
        let async = false;
        const results = sockets.map((socket) => {

            try {
                const result = filter(envelope.path, envelope.message, { socket, credentials: socket.credentials, params: topic.params, internal: envelope.internal });
                if (typeof (result as PromiseLike<FilterResult> | undefined)?.then === 'function') {          // any thenable
                    async = true;
                    return Promise.resolve(result).catch((err) => this.filterFailed(err, envelope));
                }

                return result;
            }
            catch (err) {
                return this.filterFailed(err, envelope);
            }
        });

        if (!async) {
            return this.sendFiltered(sockets, results as FilterResult[], envelope, pub);
        }

        return Promise.all(results).then((settled) => this.sendFiltered(sockets, settled, envelope, pub));
    }

    private sendFiltered(sockets: Connection[], decisions: FilterResult[], envelope: PublishEnvelope, pub: Prepared): void {

        for (let i = 0; i < sockets.length; ++i) {
            const decision = decisions[i];
            const socket = sockets[i]!;
            if (!decision || !socket.isOpen()) {
                continue;
            }

            if (typeof decision === 'object' && 'override' in decision) {
                const override = this.prepareOverride(envelope, decision.override);
                if (override) {
                    socket.deliver(override);
                }

                continue;
            }

            socket.deliver(pub);
        }
    }

    // Replays missed publishes to one socket, through the same user targeting and filter as live ones.
    async replay(socket: Connection, topic: Topic, envelopes: PublishEnvelope[]): Promise<void> {

        const filter = topic.route.filter;
        for (const envelope of envelopes) {
            if (envelope.path !== topic.path || envelope.user !== undefined && envelope.user !== socket.user || envelope.once && elsewhere(socket, envelope.once, topic.path)) {
                continue;                                                   // never another path's, nor another user's, nor twice
            }

            let decision: FilterResult = true;
            if (filter) {
                try {
                    decision = await filter(envelope.path, envelope.message, { socket, credentials: socket.credentials, params: topic.params, internal: envelope.internal });
                }
                catch (err) {
                    decision = this.filterFailed(err, envelope);
                }
            }

            if (socket.subscriptions.get(topic.path) !== topic) {
                return;                                                     // revoked (or closed) while the filter ran
            }

            const prepared = !decision ? null : typeof decision === 'object' && 'override' in decision ? this.prepareOverride(envelope, decision.override) : preparePub(envelope, envelope.message);
            if (prepared) {
                socket.sendPrepared(prepared);
            }
        }
    }

    // An override the filter made for one socket: one that cannot be serialised (a BigInt, a cycle) is that
    // socket's loss alone, logged like a failing filter (the publish itself went out).
    private prepareOverride(envelope: PublishEnvelope, override: unknown): Prepared | null {

        try {
            return preparePub(envelope, override);
        }
        catch (err) {
            this.logFilterError(envelope, err);
            return null;
        }
    }

    // A failing filter skips its socket only. A programmer error (TypeError, ReferenceError, ...) also fails the
    // publish that is being watched on this node (see watch()).
    private filterFailed(err: unknown, envelope: PublishEnvelope): false {

        this.logFilterError(envelope, err);
        const watched = this.watched.get(envelope);
        if (watched && watched.error === undefined && isProgrammerError(err)) {
            watched.error = err;
        }

        return false;
    }

    private logFilterError(envelope: PublishEnvelope, error: unknown): void {

        this.server.log(['pulse', 'filter', 'error'], { path: envelope.path, error });
    }

    // The publish of `envelope` from this node: the first programmer error of a filter run here for it is
    // recorded. Only the in-process broker hands this very envelope to deliver(); another broker's copy is not
    // watched, and its filter errors are logged only.
    watch(envelope: PublishEnvelope): { error?: unknown } {

        const watched = {};
        this.watched.set(envelope, watched);
        return watched;
    }

    private authorize(socket: Connection, route: SubscriptionRoute, params: Record<string, string>): void {

        const auth = route.auth;
        if (!auth) {
            return;
        }

        const credentials = socket.credentials;
        if (!credentials) {
            if (auth.mode === 'required') {
                throw Boom.unauthorized('Authentication required to subscribe');
            }

            return;
        }

        if (auth.scope) {
            const scopes = auth.scopeHasParams ? auth.scope.map((scope) => Hoek.reachTemplate({ params }, scope)) : auth.scope;
            const held: unknown = credentials.scope;
            const allowed = typeof held === 'string' ? scopes.includes(held) : Array.isArray(held) && held.some((item) => scopes.includes(item));
            if (!allowed) {
                throw Boom.forbidden('Insufficient scope to subscribe, expected any of: ' + scopes.join(','));
            }
        }

        if (auth.entity === 'user' && !credentials.user) {
            throw Boom.forbidden('Application credentials cannot be used on a user subscription');
        }

        if (auth.entity === 'app' && credentials.user) {
            throw Boom.forbidden('User credentials cannot be used on an application subscription');
        }
    }

    private detach(socket: Connection, topic: Topic): void {

        if (topic.route.presence) {
            this.presence.leave(socket, topic.path);
        }

        socket.subscriptions.delete(topic.path);
        socket.grouped?.delete(topic.path);
        forget(socket, topic.path);
        topic.delete(socket);
        if (topic.route.source) {
            this.presence.unfollow(socket, topic.path, !topic.sockets.size);
        }

        if (!topic.sockets.size) {                   // an empty topic is always the registered one: nothing joins it after
            this.topics.delete(topic.path);
            this.hooks.lastSubscriberGone(topic.path);
        }
    }

    private async notifyUnsubscribe(socket: Connection, topic: Topic): Promise<void> {

        if (!topic.route.onUnsubscribe) {
            return;
        }

        try {
            await topic.route.onUnsubscribe(socket, topic.path, topic.params);
        }
        catch (err) {
            this.server.log(['pulse', 'onUnsubscribe', 'error'], err as Error);
        }
    }
}

// A publish to several paths, once per socket: the socket gets it on the first listed path it holds.
const elsewhere = (socket: Connection, paths: string[], path: string): boolean => {

    for (const listed of paths) {
        if (listed === path) {
            break;
        }

        if (socket.subscriptions.has(listed)) {
            return true;
        }
    }

    return false;
};

const recipients = (topic: Topic, envelope: PublishEnvelope): Iterable<Connection> => {

    const sockets = topic.recipients(envelope.user);
    const once = envelope.once;
    return once ? [...sockets].filter((socket) => !elsewhere(socket, once, topic.path)) : sockets;
};

// The nes pub message, key order as nes sends it, the message serialised once for both forms; the form
// with `position` only goes to sockets that negotiated recovery.
const preparePub = (envelope: PublishEnvelope, message: unknown): Prepared => {

    const body = JSON.stringify(message);
    const head = '{"type":"pub","path":' + JSON.stringify(envelope.path) + (body === undefined ? '' : ',"message":' + body);
    const position = envelope.position;
    return new Prepared(head + '}', position ? head + ',"position":' + JSON.stringify(position) + '}' : null, envelope.path, position?.offset ?? 0, position?.epoch ?? null);
};
