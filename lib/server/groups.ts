// Server-side subscriptions: the application subscribes (or unsubscribes) every socket of a user, or one
// socket, on every node, optionally recording the user's membership so that its later sockets join at hello.
// The broker carries the command to every node (GroupStore.send); each node applies it to its own sockets here.
// A node that may have missed commands (its broker's subscription was lost) reads the recorded memberships again.

import * as Boom from '@hapi/boom';
import type { Server } from '@hapi/hapi';

import type { GroupStore, MembershipCommand } from '../broker';
import { isWellFormed, transientStatus } from '../protocol';
import type { Position } from '../protocol';
import { userKey } from './auth';
import * as Catchups from './catchup';
import type { Catchup } from './catchup';
import type { Connection as Socket, SocketConfig } from './socket';
import type { Subscriptions } from './subscriptions';

export interface GroupsHost extends Catchups.RecoverySource<Socket> {
    readonly server: Server;
    readonly config: SocketConfig;
    readonly subscriptions: Subscriptions;
    readonly sockets: Map<string, Socket>;
    readonly byUser: Map<string, Set<Socket>>;
}

export interface SubscribeUserOptions {
    persist?: boolean;                   // record the membership: the user's later sockets, on any node, join at hello
    ttl?: number;                        // ms the recorded membership lasts (persist only; default: until unsubscribed)
}

export interface HelloJoin {
    joined: string[];
    catchups: Catchup[];
    unavailable: boolean;                // a route answered 502/503/504 for one of them: try again later
}

const tooMany = 'Too many subscriptions';
const reloadRetry = 1000;                        // ms before a reload that could not read the memberships runs again

export class Groups {

    private readonly commands = new WeakMap<Socket, number>();     // membership commands applied to each socket
    private retry: NodeJS.Timeout | undefined;

    constructor(private readonly host: GroupsHost, private readonly store: GroupStore | undefined, private readonly indexed: boolean) { }

    // ---- Application API ----

    async subscribeUser(user: string | number, paths: string | string[], options: SubscribeUserOptions = {}): Promise<void> {

        const key = this.user(user);
        const list = this.paths(paths);
        const store = this.broker();
        const { persist = false, ttl } = options;
        if (typeof persist !== 'boolean' || ttl !== undefined && (!persist || !Number.isInteger(ttl) || ttl < 1)) {
            throw new Error('Invalid options: persist must be a boolean, ttl a positive integer (with persist only)');
        }

        const command: MembershipCommand = { action: 'subscribe', paths: list, user: key };
        if (persist) {
            command.persist = true;
        }

        this.admit(command, [...this.host.byUser.get(key) ?? []]);
        try {
            await store.send(command, persist ? { ttl: ttl ?? null, max: this.max() } : null);
        }
        catch (err) {
            this.host.server.log(['pulse', 'subscribe', 'error'], { user: key, paths: list, error: err });
            throw err;
        }
    }

    async unsubscribeUser(user: string | number, paths: string | string[], options: { message?: unknown } = {}): Promise<void> {

        const key = this.user(user);
        const command: MembershipCommand = { action: 'unsubscribe', paths: this.paths(paths), user: key };
        if (options.message !== undefined) {
            command.message = options.message;
        }

        await this.broker().send(command, { ttl: null, max: this.max() });
    }

    async subscribeSocket(id: string, paths: string | string[]): Promise<void> {

        const command: MembershipCommand = { action: 'subscribe', paths: this.paths(paths), socket: this.socketId(id) };
        const store = this.broker();
        const local = this.host.sockets.get(id);
        this.admit(command, local ? [local] : []);
        await store.send(command, null);
    }

    async unsubscribeSocket(id: string, paths: string | string[], options: { message?: unknown } = {}): Promise<void> {

        const command: MembershipCommand = { action: 'unsubscribe', paths: this.paths(paths), socket: this.socketId(id) };
        if (options.message !== undefined) {
            command.message = options.message;
        }

        await this.broker().send(command, null);
    }

    members(path: string): Promise<string[]> {

        return this.broker().members(this.paths(path)[0]!);
    }

    pathsOf(user: string | number): Promise<string[]> {

        const key = this.user(user);
        return this.broker().paths(key);
    }

    // ---- This node's sockets ----

    // A command from the broker (any node's): applied to this node's sockets of the user, or to the socket. A
    // subscribe that one of them cannot take within maxSubscriptions is applied to none of them here, and logged.
    async apply(command: MembershipCommand): Promise<void> {

        const targets = this.targets(command);
        for (const socket of targets) {
            this.commands.set(socket, (this.commands.get(socket) ?? 0) + 1);
        }

        if (command.action === 'unsubscribe') {
            await Promise.all(targets.map((socket) => this.leave(socket, command.paths, command.message)));
            return;
        }

        try {
            this.admit(command, targets);
        }
        catch {
            return;                                                  // admit() logged it
        }

        await Promise.all(targets.map(async (socket) => {

            const fresh = command.paths.filter((path) => !socket.subscriptions.has(path));
            socket.reserve(fresh.length);
            try {
                for (const path of fresh) {
                    await socket.inOrder(path, () => this.join(socket, path, command.persist === true));
                }
            }
            finally {
                socket.reserve(-fresh.length);
            }
        }));
    }

    // At hello: the user's recorded memberships, beside the subscriptions the client asked for itself, within
    // maxSubscriptions. A membership the route refuses (auth, onSubscribe) is logged and left out.
    async hello(socket: Socket, positions: Record<string, Position> | undefined): Promise<HelloJoin> {

        const result: HelloJoin = { joined: [], catchups: [], unavailable: false };
        if (!this.store || socket.user === null) {
            return result;
        }

        let paths: string[];
        try {
            paths = await this.store.paths(socket.user);
        }
        catch (err) {
            // The broker out of reach: the socket goes on without them (as any socket does while Redis is down)
            this.host.server.log(['pulse', 'subscribe', 'error'], { socket: socket.id, user: socket.user, error: err });
            return result;
        }

        for (const path of paths) {
            if (socket.subscriptions.has(path)) {
                continue;                                            // the client subscribed it itself
            }

            if (socket.room() < 1) {
                this.host.server.log(['pulse', 'subscribe', 'error'], { socket: socket.id, user: socket.user, path, error: tooMany });
                continue;
            }

            try {
                const catchup = await Catchups.subscribe(this.host, socket, path, positions?.[path]);
                this.mark(socket, path);
                result.joined.push(path);
                if (catchup) {
                    result.catchups.push(catchup);
                }
            }
            catch (err) {
                this.host.server.log(['pulse', 'subscribe', 'error'], { socket: socket.id, user: socket.user, path, error: err });
                result.unavailable ||= transientStatus(Boom.boomify(err as Error).output.statusCode);
            }
        }

        return result;
    }

    // After the broker's subscription was lost and restored: the membership commands sent meanwhile were missed.
    // Each socket done with hello reads its user's recorded memberships again, joins those it does not hold and
    // leaves those it holds through a membership that is no longer recorded; nothing else of its subscriptions
    // changes. A read that fails (the broker out of reach again) is logged, and the whole reload runs again later.
    reload(): void {

        clearTimeout(this.retry);
        this.resync().catch((error) => {

            this.host.server.log(['pulse', 'subscribe', 'error'], { reload: true, error });
            clearTimeout(this.retry);
            this.retry = setTimeout(() => this.reload(), reloadRetry).unref();      // a late failure after stop() finds no socket
        });
    }

    stop(): void {

        clearTimeout(this.retry);
    }

    private async resync(): Promise<void> {

        if (!this.store) {
            return;                                                  // nothing is recorded
        }

        for (const user of [...this.host.byUser.keys()]) {
            // A command applied to one of the user's sockets during the read may be newer than what was read
            let applied: number;
            let recorded: string[];
            do {
                applied = this.applied(user);
                recorded = await this.store.paths(user);
            } while (applied !== this.applied(user));

            await Promise.all(this.targets({ user }).flatMap((socket) => this.match(socket, new Set(recorded))));
        }
    }

    private applied(user: string): number {

        return this.targets({ user }).reduce((sum, socket) => sum + (this.commands.get(socket) ?? 0), 0);
    }

    private match(socket: Socket, recorded: Set<string>): Promise<void>[] {

        const work: Promise<void>[] = [];
        for (const path of [...socket.grouped ?? []]) {
            if (!recorded.has(path)) {
                work.push(this.leave(socket, [path], undefined));
            }
        }

        for (const path of recorded) {
            if (socket.subscriptions.has(path)) {
                continue;
            }

            if (socket.room() < 1) {
                this.host.server.log(['pulse', 'subscribe', 'error'], { socket: socket.id, user: socket.user, path, error: tooMany });
                continue;
            }

            socket.reserve(1);
            work.push(socket.inOrder(path, () => this.join(socket, path, true)).finally(() => socket.reserve(-1)));
        }

        return work;
    }

    // A path the server joined because of a recorded membership: a reload ends it when the record is gone.
    private mark(socket: Socket, path: string): void {

        (socket.grouped ??= new Set()).add(path);
    }

    private async join(socket: Socket, path: string, recorded: boolean): Promise<void> {

        if (socket.subscriptions.has(path)) {
            return;                                                  // subscribed meanwhile, by the client
        }

        try {
            const catchup = await Catchups.subscribe(this.host, socket, path, undefined);
            if (!socket.subscriptions.has(path)) {
                return;                                              // closed while onSubscribe ran
            }

            if (recorded) {
                this.mark(socket, path);
            }

            socket.joined(path, catchup && socket.recovery ? catchup.report().position : null);

            if (catchup) {
                await Catchups.catchUp(this.host, socket, [catchup]);
            }
        }
        catch (err) {
            this.host.server.log(['pulse', 'subscribe', 'error'], { socket: socket.id, user: socket.user, path, error: err });
        }
    }

    private async leave(socket: Socket, paths: string[], message: unknown): Promise<void> {

        for (const path of paths) {
            if (socket.subscriptions.has(path)) {
                await socket.inOrder(path, () => socket.revoke(path, message, { ignoreClose: true }));
            }
        }
    }

    private targets(command: Pick<MembershipCommand, 'user' | 'socket'>): Socket[] {

        const sockets = command.socket !== undefined ? [this.host.sockets.get(command.socket)] : [...this.host.byUser.get(command.user!) ?? []];
        return sockets.filter((socket): socket is Socket => socket?.ready === true);        // not those still in hello
    }

    // Throws (429, logged) when one of the sockets cannot take the paths it does not hold yet.
    private admit(command: MembershipCommand, sockets: Socket[]): void {

        for (const socket of sockets) {
            const fresh = command.paths.filter((path) => !socket.subscriptions.has(path)).length;
            if (fresh > socket.room()) {
                const error = Boom.tooManyRequests(`${tooMany}: socket ${socket.id} can take ${socket.room()} more, not ${fresh}`);
                this.host.server.log(['pulse', 'subscribe', 'error'], { socket: socket.id, user: command.user, paths: command.paths, error });
                throw error;
            }
        }
    }

    // ---- Argument checks ----

    private broker(): GroupStore {

        if (!this.store) {
            throw new Error('The broker does not support server-side subscriptions');
        }

        return this.store;
    }

    private user(user: string | number): string {

        const key = userKey(user);
        if (key === null) {
            throw new Error('Invalid user: must be a non-empty string or a number');
        }

        if (!this.indexed) {
            throw new Error('Socket auth indexing is disabled');
        }

        return key;
    }

    private socketId(id: string): string {

        if (typeof id !== 'string' || !id) {
            throw new Error('Invalid socket id');
        }

        return id;
    }

    private max(): number {

        return this.host.config.limits.maxSubscriptions;
    }

    // One path or a list of them: each a declared subscription's concrete path, without query; duplicates dropped.
    private paths(paths: string | string[]): string[] {

        const list = [...new Set(typeof paths === 'string' ? [paths] : Array.isArray(paths) ? paths : [])];
        if (!list.length) {
            throw new Error('Invalid paths: a path or a non-empty array of paths');
        }

        if (list.length > this.max()) {
            throw Boom.tooManyRequests(`${tooMany}: ${list.length} paths, maxSubscriptions is ${this.max()}`);
        }

        for (const path of list) {
            if (typeof path !== 'string' || path[0] !== '/' || !isWellFormed(path) || path.includes('?') || path.length > this.host.config.protocolLimits.maxPathLength) {
                throw new Error(`Invalid subscription path: ${String(path)}`);
            }

            if (!this.host.subscriptions.match(path)) {
                throw Boom.notFound(`Subscription not found: ${path}`);
            }
        }

        return list;
    }
}
