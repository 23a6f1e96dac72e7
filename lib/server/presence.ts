// Presence: who is on a path, across every node.
//
// Design. A subscription declared with `presence` makes every socket subscribed to one of its paths a
// member of that path: authenticated users are listed (one entry per user, whatever its number of sockets),
// anonymous sockets are only counted. The state lives with the broker (PresenceStore, see broker.ts):
//
// - Writing. This node keeps its own sockets per (path, user) and, once per batch interval, hands the store
//   the absolute counts of the pairs that changed (a socket that leaves and comes back within the interval
//   sends nothing). Absolute counts make a resend harmless: after a failed write, or when the store lost this
//   node's entries (its lease ran out), they are simply sent again. The same writes carry which users this node
//   holds sockets of (from the first route with presence on), so that the store counts the cluster's distinct
//   users. A user's first socket on a path of this node is admitted by the store before its sub is answered
//   (the limit check and its entry in one step); the admissions waiting meanwhile go together in the next write.
// - Changes. The store publishes what a write changed (joins, leaves, info updates, counts) on the derived path
//   presencePath(path) through the broker's ordinary delivery, in the order it applied them, to every node
//   with followers of that path.
// - Following. Any client follows a path's presence by subscribing to its derived path: same auth as the
//   source route (scope, entity, mode), plus the route's optional onFollow. A node with followers of a path
//   keeps a copy of its members (read from the store once, then kept up to date by the changes; read again
//   when the broker may have missed some). A new follower gets the whole list, and every follower at most
//   one diff per batch interval, made against what the followers were last told, so that a member who leaves
//   and comes back within the interval (on any node) produces nothing.
// - What leaves the server: for each member an opaque id (a keyed hash of the user, the key shared by all
//   nodes through the store) and what info(credentials) returned; the anonymous count. Nothing else.
// - Bounds: maxMembers per path (exact across nodes: checked by the store's admission), maxInfoBytes per member;
//   followers are subscriptions, bounded by maxSubscriptions.

import { createHmac } from 'node:crypto';

import * as Boom from '@hapi/boom';
import * as Hoek from '@hapi/hoek';
import type { Server } from '@hapi/hapi';

import type { PresenceAdmission, PresenceChange, PresenceCount, PresenceEntry, PresenceNodeUser, PresenceStore, PublishEnvelope } from '../broker';
import { EncodedPayload, encode, presenceJson, presencePrefix } from '../protocol';
import type { PresenceMember } from '../protocol';
import { Prepared } from './prepared';
import type { Connection, Socket } from './socket';

export interface PresenceOptions {
    info?: (credentials: Record<string, any>) => unknown;     // what other clients see of a member (JSON)
    interval?: number;                                         // ms: batch interval, default 250
    maxMembers?: number;                                       // users on one path, default 10000
    maxInfoBytes?: number;                                     // JSON of one member's info, default 1024
    onFollow?: (socket: Socket, path: string, params: Record<string, string>) => void | Promise<void>;
}

export interface PresenceSettings {
    info: ((credentials: Record<string, any>) => unknown) | null;
    interval: number;
    maxMembers: number;
    maxInfoBytes: number;
    onFollow: PresenceOptions['onFollow'];
}

export interface PresenceMemberInfo {
    user: string;
    info: unknown;
    sockets: number;
}

export interface PresenceStats {
    node: { sockets: number; users: number };
    cluster: { nodes: number; sockets: number; users: number };
}

const presenceKeys = ['info', 'interval', 'maxMembers', 'maxInfoBytes', 'onFollow'];

const positiveInteger = (value: unknown): boolean => Number.isInteger(value) && (value as number) > 0;

export const presenceSettings = (pattern: string, options: true | PresenceOptions): PresenceSettings => {

    const given = options === true ? {} : options;
    Hoek.assert(typeof given === 'object' && !Array.isArray(given), `Invalid subscription options: ${pattern} (presence must be true or an object)`);
    for (const key of Object.keys(given)) {
        Hoek.assert(presenceKeys.includes(key), `Invalid subscription options: ${pattern} ("presence.${key}" is not allowed)`);
    }

    const { info = null, interval = 250, maxMembers = 10000, maxInfoBytes = 1024, onFollow } = given;
    Hoek.assert(info === null || typeof info === 'function', `Invalid subscription options: ${pattern} (presence.info must be a function)`);
    Hoek.assert(onFollow === undefined || typeof onFollow === 'function', `Invalid subscription options: ${pattern} (presence.onFollow must be a function)`);
    Hoek.assert(positiveInteger(interval) && positiveInteger(maxMembers) && positiveInteger(maxInfoBytes), `Invalid subscription options: ${pattern} (presence.interval, maxMembers and maxInfoBytes must be positive integers)`);
    return { info, interval, maxMembers, maxInfoBytes, onFollow };
};

// What a socket joins with: its user ('' when anonymous) and that user's info JSON.
export interface Admission {
    user: string;
    info: string;
}

interface LocalUser {
    sockets: number;
    info: string;                                              // JSON, from this node's first socket of the user
}

// This node's sockets on one presence path.
interface LocalPath {
    users: Map<string, LocalUser>;                            // '' holds the anonymous sockets
    joined: Map<Connection, string>;                              // the user each socket joined as
    members: number;                                          // users (not '') with a socket here
}

type Member = PresenceMember<EncodedPayload>;                // what followers see of a member, its info JSON already

// What this node knows of the members of a path that has followers here.
class Replica {

    readonly members = new Map<string, Member>();
    counts: PresenceCount = { users: 0, sockets: 0, anonymous: 0 };
    anonymousSent = 0;
    touched = new Map<string, string | null>();               // since the last diff: user -> info then (null: absent)
    loading: Promise<void> | null = null;
    buffered: PresenceChange[] | null = [];                   // changes received while the store is read (null: not reading)
    readonly fresh = new Set<Connection>();                       // followers still to be sent the list
    readonly followers = new Set<Connection>();                   // followers that had the list: they get diffs
    timer: NodeJS.Timeout | null = null;
    listTimer: NodeJS.Timeout | null = null;
    retryTimer: NodeJS.Timeout | null = null;
    list: Prepared | null = null;                             // the list message, until the members change

    constructor(readonly path: string, readonly derived: string, readonly interval: number) { }
}

export class Presence {

    private readonly local = new Map<string, LocalPath>();
    private dirty = new Map<string, Set<string>>();
    private readonly replicas = new Map<string, Replica>();
    private readonly byTopic = new WeakMap<object, Replica>();
    private interval = Infinity;                              // writes: the shortest batch interval of any route
    private flushTimer: NodeJS.Timeout | null = null;
    private writing: Promise<void> | null = null;
    private started = false;
    private admissions: { admission: PresenceAdmission; resolve: (admitted: boolean) => void; reject: (err: unknown) => void }[] = [];
    private tracking = false;                                 // a route has presence: this node's users are written
    private readonly users = new Map<string, Set<Connection>>();  // this node's users, their open sockets
    private dirtyUsers = new Set<string>();

    constructor(private readonly server: Server, private readonly store: PresenceStore | undefined, private readonly nodeStats: () => { sockets: number; users: number }) { }

    register(pattern: string, settings: PresenceSettings): void {

        Hoek.assert(this.store, `Invalid subscription options: ${pattern} (presence needs a broker with a presence store)`);
        this.interval = Math.min(this.interval, settings.interval);
        this.tracking = true;
    }

    start(): void {

        this.started = true;
    }

    // After the sockets closed: their leaves are written before the broker stops.
    async stop(): Promise<void> {

        this.started = false;                                         // a failed write is not retried
        await this.flush();                                           // (the replicas went with the followers' sockets)
    }

    // ---- Members (sockets subscribed to a presence path) ----

    // Before a socket joins: its info, and room on the path. Throws a Boom error the sub is answered with.
    async admit(socket: Connection, path: string, settings: PresenceSettings): Promise<Admission> {

        const user = socket.user ?? '';
        if (user === '') {
            return { user, info: 'null' };
        }

        const known = this.local.get(path)?.users.get(user);
        if (known?.sockets) {
            return { user, info: known.info };                        // already a member through this node
        }

        const info = await this.infoOf(socket, path, settings);
        if (!await this.reserve({ path, user, info, max: settings.maxMembers })) {
            throw Boom.tooManyRequests('Too many members on this path');
        }

        return { user, info };
    }

    // The JSON of what info(credentials) returns for the socket's current credentials. Throws (logged) when info()
    // throws or its JSON is over maxInfoBytes.
    private async infoOf(socket: Connection, path: string, settings: PresenceSettings): Promise<string> {

        let info: string;
        try {
            info = JSON.stringify(settings.info ? await settings.info(socket.auth.credentials!) ?? null : null);
        }
        catch (err) {
            this.server.log(['pulse', 'presence', 'error'], { path, error: err });
            throw Boom.internal('Presence info failed');
        }

        if (Buffer.byteLength(info) > settings.maxInfoBytes) {
            this.server.log(['pulse', 'presence', 'error'], { path, error: `Presence info of ${Buffer.byteLength(info)} bytes is over maxInfoBytes (${settings.maxInfoBytes})` });
            throw Boom.internal('Presence info too large');
        }

        return info;
    }

    // After a reauth that kept the socket's identity (another user or strategy ends every subscription first), for
    // a presence path it is on. A member: its info is computed again and, when it changed, set (followers get an
    // update; info that fails keeps the one it had). A socket that was anonymous and now has a user: admitted as
    // that user, as a sub would be, and joins as it. Resolves false when that admission is refused: the caller
    // revokes the path.
    async reauthenticated(socket: Connection, path: string, settings: PresenceSettings): Promise<boolean> {

        const joined = this.local.get(path)!.joined.get(socket)!;
        const user = socket.user ?? '';
        if (joined !== user) {
            let admission: Admission;
            try {
                admission = await this.admit(socket, path, settings);
            }
            catch {
                return false;
            }

            if (this.local.get(path)?.joined.get(socket) === joined) {          // not gone (or joined again) meanwhile
                this.leave(socket, path);
                this.join(socket, path, admission);
            }

            return true;
        }

        if (user === '') {
            return true;
        }

        let info: string;
        try {
            info = await this.infoOf(socket, path, settings);
        }
        catch {
            return true;
        }

        const member = this.local.get(path)?.joined.get(socket) === user ? this.local.get(path)!.users.get(user)! : null;
        if (member && member.info !== info) {
            member.info = info;
            await this.store!.update(path, user, info).catch(this.logError);
        }

        return true;
    }

    private readonly logError = (err: unknown): void => {

        this.server.log(['pulse', 'presence', 'error'], err as object);
    };

    // Admitted by the store, with the admissions asked for while a write is under way. Whatever the store did (a
    // failure may hide a stored one), the pair is written again with the next batch: its true count, 0 if the
    // socket never joined.
    private reserve(admission: PresenceAdmission): Promise<boolean> {

        return new Promise((resolve, reject) => {

            this.admissions.push({ admission, resolve, reject });
            if (this.admissions.length === 1) {
                void this.admitQueued();
            }
        });
    }

    private async admitQueued(): Promise<void> {

        while (this.writing) {
            await this.writing;
        }

        const queued = this.admissions;                               // never empty: a call starts with the first
        this.admissions = [];
        this.writing = this.store!.admit(queued.map((item) => item.admission)).then((answers) => {

            queued.forEach((item, i) => {

                if (answers[i]) {
                    this.changed(item.admission.path, item.admission.user);
                }

                item.resolve(answers[i]!);
            });
        }, (err) => {

            this.logError(err);
            for (const item of queued) {
                this.changed(item.admission.path, item.admission.user);
                item.reject(err);
            }
        });

        await this.writing;
        this.writing = null;
    }

    join(socket: Connection, path: string, admission: Admission): void {

        let local = this.local.get(path);
        if (!local) {
            local = { users: new Map(), joined: new Map(), members: 0 };
            this.local.set(path, local);
        }

        local.joined.set(socket, admission.user);
        const entry = local.users.get(admission.user);
        if (entry) {
            ++entry.sockets;
        }
        else {
            local.users.set(admission.user, { sockets: 1, info: admission.info });
        }

        if (admission.user !== '' && local.users.get(admission.user)!.sockets === 1) {
            ++local.members;                                      // the user's first socket on the path here
        }

        this.changed(path, admission.user);
    }

    leave(socket: Connection, path: string): void {

        const local = this.local.get(path)!;                          // a socket in a presence topic joined it
        const user = local.joined.get(socket)!;
        local.joined.delete(socket);
        if (--local.users.get(user)!.sockets === 0 && user !== '') {
            --local.members;
        }

        this.changed(path, user);
    }

    // This node's own part of a presence path with sockets here: its users with a socket on the path and its
    // anonymous sockets on it (metrics and the inspector; no store read). A user on several nodes counts on each.
    localMembers(path: string): { members: number; anonymous: number } {

        const local = this.local.get(path)!;                          // a path with members here has its entry
        return { members: local.members, anonymous: local.users.get('')?.sockets ?? 0 };
    }

    // The store lost this node's entries: everything is written again.
    resend(): void {

        for (const [path, local] of this.local) {
            for (const user of local.users.keys()) {
                this.changed(path, user);
            }
        }

        for (const user of this.users.keys()) {
            this.userChanged(user);
        }
    }

    // A socket authenticated as a user (hello, reauth) / gone or authenticated again (its user then is the one it
    // leaves). Written only once a route has presence (routes are declared before the server starts).
    userOn(socket: Connection): void {

        const user = socket.user;
        if (!this.tracking || user === null) {
            return;
        }

        let sockets = this.users.get(user);
        if (!sockets) {
            sockets = new Set();
            this.users.set(user, sockets);
            this.userChanged(user);
        }

        sockets.add(socket);
    }

    userOff(socket: Connection): void {

        const user = socket.user;
        const sockets = user === null ? undefined : this.users.get(user);
        if (sockets?.delete(socket) && !sockets.size) {
            this.users.delete(user!);
            this.userChanged(user!);
        }
    }

    private userChanged(user: string): void {

        this.dirtyUsers.add(user);
        this.scheduleFlush();
    }

    private changed(path: string, user: string): void {

        let users = this.dirty.get(path);
        if (!users) {
            users = new Set();
            this.dirty.set(path, users);
        }

        users.add(user);
        this.scheduleFlush();
    }

    private scheduleFlush(): void {

        if (!this.flushTimer && this.started) {
            this.flushTimer = setTimeout(() => this.flush(), this.interval);
        }
    }

    // One write at a time, so that the store sees this node's counts in order.
    private async flush(): Promise<void> {

        clearTimeout(this.flushTimer!);
        this.flushTimer = null;
        while (this.writing) {
            await this.writing;
        }

        const dirty = this.dirty;
        const dirtyUsers = this.dirtyUsers;
        if (!dirty.size && !dirtyUsers.size) {
            return;
        }

        this.dirty = new Map();
        this.dirtyUsers = new Set();
        const entries: PresenceEntry[] = [];
        for (const [path, users] of dirty) {
            const local = this.local.get(path);
            for (const user of users) {
                const held = local?.users.get(user);          // none: admitted, but the socket never joined
                entries.push({ path, user, sockets: held?.sockets ?? 0, info: held?.info ?? 'null' });
            }
        }

        const users: PresenceNodeUser[] = [];
        for (const user of dirtyUsers) {
            users.push({ user, present: this.users.has(user) });
        }

        this.writing = this.store!.apply(entries, users).then(() => {

            for (const { path, user } of entries) {
                const local = this.local.get(path);
                if (local?.users.get(user)?.sockets === 0) {                 // (written again as 0 if dirty again)
                    local.users.delete(user);
                    if (!local.users.size) {
                        this.local.delete(path);
                    }
                }
            }
        }, (err) => {

            this.logError(err);
            for (const { path, user } of entries) {
                this.changed(path, user);                             // written again after the next interval
            }

            for (const { user } of users) {
                this.userChanged(user);
            }
        });

        await this.writing;
        this.writing = null;
    }

    // ---- Followers (sockets subscribed to a derived path) ----
    //
    // A node keeps a replica of a path's members for as long as it holds the derived path's topic.

    // This node gained the topic of a derived path.
    open(topic: object, derived: string, settings: PresenceSettings): void {

        const path = derived.slice(presencePrefix.length);
        const replica = new Replica(path, derived, settings.interval);
        this.replicas.set(path, replica);
        this.byTopic.set(topic, replica);
    }

    // Resolves once this node has the members of the path; the socket gets the list next. The replica is the
    // topic's, even when the topic went away meanwhile (the socket left while the broker subscribed).
    async follow(socket: Connection, topic: object, derived: string): Promise<void> {

        const replica = this.byTopic.get(topic)!;
        if (!replica.loading) {
            this.load(replica, true);
        }

        await replica.loading;
        if (socket.subscriptions.has(derived)) {                      // not gone meanwhile
            replica.fresh.add(socket);
            replica.listTimer ??= setTimeout(() => this.sendLists(replica), 0);
        }
    }

    // `last`: the node's topic of the derived path is gone with this socket.
    unfollow(socket: Connection, derived: string, last: boolean): void {

        const replica = this.replicas.get(derived.slice(presencePrefix.length))!;
        replica.fresh.delete(socket);
        replica.followers.delete(socket);
        if (last) {
            clearTimeout(replica.timer!);
            clearTimeout(replica.listTimer!);
            clearTimeout(replica.retryTimer!);
            this.replicas.delete(replica.path);
        }
    }

    // A change published by the store (through the broker) for a path followed here (so with a replica).
    receive(envelope: PublishEnvelope): void {

        const replica = this.replicas.get(envelope.path.slice(presencePrefix.length))!;
        const change = envelope.message as PresenceChange;
        if (replica.buffered) {
            replica.buffered.push(change);
            return;
        }

        this.apply(replica, change);
    }

    // Changes may have been missed (the broker lost its subscriptions for a while): every followed path is read again.
    reload(): void {

        for (const replica of this.replicas.values()) {
            if (!replica.buffered) {                                  // not being read already
                this.load(replica, false);
            }
        }
    }

    private load(replica: Replica, initial: boolean): void {

        replica.buffered = [];
        replica.loading = this.store!.members(replica.path).then((snapshot) => {

            if (this.replicas.get(replica.path) !== replica) {
                return;                                               // nobody follows it any more
            }

            const present = new Set<string>();
            for (const { user, info } of snapshot.members) {
                present.add(user);
                this.set(replica, user, info);
            }

            for (const user of [...replica.members.keys()]) {
                if (!present.has(user)) {
                    this.set(replica, user, null);
                }
            }

            replica.counts = { users: snapshot.users, sockets: snapshot.sockets, anonymous: snapshot.anonymous };
            this.applyBuffered(replica);
            this.schedule(replica);
            if (initial) {
                replica.touched.clear();                              // nobody was told anything yet: the list says it all
                replica.anonymousSent = replica.counts.anonymous;
                clearTimeout(replica.timer!);
                replica.timer = null;
            }
        }, (err) => {

            this.logError(err);
            this.applyBuffered(replica);
            if (initial) {
                throw Boom.serverUnavailable('Presence unavailable');   // the followers waiting on it are refused
            }

            replica.retryTimer = setTimeout(() => this.load(replica, false), replica.interval);     // keep what we had, read again later
        });

        replica.loading.catch(Hoek.ignore);                                 // followers waiting on it handle it
    }

    private applyBuffered(replica: Replica): void {

        const buffered = replica.buffered!;
        replica.buffered = null;
        for (const change of buffered) {
            this.apply(replica, change);
        }
    }

    private apply(replica: Replica, change: PresenceChange): void {

        for (const [user, info] of [...change.joins, ...change.updates]) {
            this.set(replica, user, info);
        }

        for (const user of change.leaves) {
            this.set(replica, user, null);
        }

        replica.counts = { users: change.users, sockets: change.sockets, anonymous: change.anonymous };
        this.schedule(replica);
    }

    private set(replica: Replica, user: string, info: string | null): void {

        const member = replica.members.get(user);
        const current = member?.info.json ?? null;
        if (current === info) {
            return;
        }

        if (!replica.touched.has(user)) {
            replica.touched.set(user, current);
        }

        replica.list = null;
        if (info === null) {
            replica.members.delete(user);
        }
        else {
            replica.members.set(user, { id: member?.id ?? this.id(user), info: new EncodedPayload(info) });
        }
    }

    // The first change after a diff starts the interval; the diff goes out at its end.
    private schedule(replica: Replica): void {

        replica.timer ??= setTimeout(() => this.sendDiff(replica), replica.interval);
    }

    private sendDiff(replica: Replica): void {

        replica.timer = null;
        const joins: Member[] = [];
        const updates: Member[] = [];
        const leaves: string[] = [];
        for (const [user, before] of replica.touched) {
            const member = replica.members.get(user);
            if (!member) {
                if (before !== null) {
                    leaves.push(this.id(user));
                }
            }
            else if (before === null) {
                joins.push(member);
            }
            else if (before !== member.info.json) {
                updates.push(member);
            }
        }

        replica.touched.clear();
        const anonymous = replica.counts.anonymous;
        if (joins.length || updates.length || leaves.length || anonymous !== replica.anonymousSent) {
            const diff = new Prepared(encode({ type: 'pub', path: replica.derived, message: presenceJson({ presence: 'diff', joins, updates, leaves, anonymous }) }));
            for (const socket of replica.followers) {
                socket.sendPrepared(diff);
            }
        }

        replica.anonymousSent = anonymous;
        this.listFresh(replica);
    }

    // New followers get the whole list once their sub (or hello) was answered: at once when the followers were told
    // everything already, else with the next diff, so that the list and the diffs after it start from one state.
    private sendLists(replica: Replica): void {

        replica.listTimer = null;
        if (replica.touched.size || replica.counts.anonymous !== replica.anonymousSent) {
            this.schedule(replica);
            return;
        }

        this.listFresh(replica);
    }

    private listFresh(replica: Replica): void {

        for (const socket of replica.fresh) {
            if (!socket.ready) {
                continue;                                             // its hello is not answered yet
            }

            replica.list ??= new Prepared(encode({ type: 'pub', path: replica.derived, message: presenceJson({ presence: 'list', members: [...replica.members.values()], anonymous: replica.counts.anonymous }) }));
            socket.sendPrepared(replica.list);
            replica.fresh.delete(socket);
            replica.followers.add(socket);
        }

        if (replica.fresh.size) {
            replica.listTimer ??= setTimeout(() => this.sendLists(replica), replica.interval);
        }
    }

    private id(user: string): string {

        return createHmac('sha256', this.store!.secret).update(user).digest('base64url').slice(0, 22);
    }

    // ---- Queries (server.presence) ----

    private get queried(): PresenceStore {

        Hoek.assert(this.store, 'Presence needs a broker with a presence store');
        return this.store;
    }

    async members(path: string): Promise<PresenceMemberInfo[]> {

        const { members } = await this.queried.members(path);
        return members.map(({ user, info, sockets }) => ({ user, info: JSON.parse(info), sockets }));
    }

    async count(path: string): Promise<PresenceCount> {

        return this.queried.count(path);
    }

    async paths(user: string): Promise<string[]> {

        return this.queried.paths(user);
    }

    async update(path: string, user: string, info: unknown, settings: PresenceSettings): Promise<boolean> {

        const json = JSON.stringify(info ?? null);
        if (Buffer.byteLength(json) > settings.maxInfoBytes) {
            throw new Error(`Presence info of ${Buffer.byteLength(json)} bytes is over maxInfoBytes (${settings.maxInfoBytes})`);
        }

        return this.queried.update(path, user, json);
    }

    async stats(): Promise<PresenceStats> {

        return { node: this.nodeStats(), cluster: await this.queried.cluster() };
    }
}
