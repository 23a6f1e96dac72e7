// The memory broker's presence store: one node, so this node's counts are the totals (and the users it reports
// are the cluster's), and every change is delivered at once through the broker's sink, like a publish.

import { randomBytes } from 'node:crypto';

import type { BrokerSink, PresenceAdmission, PresenceChange, PresenceCount, PresenceEntry, PresenceMemberEntry, PresenceNodeUser, PresenceStore } from '../broker';
import { presencePath } from '../protocol';

interface Member {
    sockets: number;
    info: string;
}

interface PathState {
    users: Map<string, Member>;
    sockets: number;
    anonymous: number;
}

export class MemoryPresence implements PresenceStore {

    readonly secret = randomBytes(16).toString('base64url');

    private readonly states = new Map<string, PathState>();
    private readonly byUser = new Map<string, Set<string>>();
    private readonly users = new Set<string>();                // the users the node holds sockets of

    constructor(private readonly sink: () => BrokerSink | null) { }

    apply(entries: PresenceEntry[], users: PresenceNodeUser[] = []): Promise<void> {

        for (const { user, present } of users) {
            if (present) {
                this.users.add(user);
            }
            else {
                this.users.delete(user);
            }
        }

        const changes = new Map<string, PresenceChange>();
        const changeOf = (path: string): PresenceChange => {

            let change = changes.get(path);
            if (!change) {
                change = { users: 0, sockets: 0, anonymous: 0, joins: [], leaves: [], updates: [] };
                changes.set(path, change);
            }

            return change;
        };

        for (const { path, user, sockets, info } of entries) {
            const state = this.states.get(path) ?? { users: new Map(), sockets: 0, anonymous: 0 };
            const member = state.users.get(user);
            const previous = user === '' ? state.anonymous : member?.sockets ?? 0;
            if (previous === sockets) {
                continue;
            }

            this.states.set(path, state);
            state.sockets += sockets - previous;
            if (user === '') {
                state.anonymous = sockets;
                changeOf(path);                                     // the anonymous count is visible
            }
            else if (!sockets) {
                state.users.delete(user);
                this.unindex(user, path);
                changeOf(path).leaves.push(user);
            }
            else if (!member) {
                state.users.set(user, { sockets, info });
                this.index(user, path);
                changeOf(path).joins.push([user, info]);
            }
            else {
                member.sockets = sockets;                           // another socket of a member: nothing to tell
            }

            if (!state.sockets) {
                this.states.delete(path);
            }
        }

        for (const [path, change] of changes) {
            Object.assign(change, this.counts(path));
            this.publish(path, change);
        }

        return Promise.resolve();
    }

    // One node: the node has an entry of the user exactly when the user is a member.
    async admit(admissions: PresenceAdmission[]): Promise<boolean[]> {

        const answers: boolean[] = [];
        for (const { path, user, info, max } of admissions) {
            const state = this.states.get(path);
            if (state?.users.has(user)) {
                answers.push(true);
                continue;
            }

            const room = (state?.users.size ?? 0) < max;
            if (room) {
                await this.apply([{ path, user, sockets: 1, info }]);
            }

            answers.push(room);
        }

        return answers;
    }

    members(path: string): Promise<PresenceCount & { members: PresenceMemberEntry[] }> {

        const members = [...this.states.get(path)?.users ?? []].map(([user, { info, sockets }]) => ({ user, info, sockets }));
        return Promise.resolve({ ...this.counts(path), members });
    }

    count(path: string): Promise<PresenceCount> {

        return Promise.resolve(this.counts(path));
    }

    paths(user: string): Promise<string[]> {

        return Promise.resolve([...this.byUser.get(user) ?? []]);
    }

    update(path: string, user: string, info: string): Promise<boolean> {

        const member = this.states.get(path)?.users.get(user);
        if (!member) {
            return Promise.resolve(false);
        }

        if (member.info !== info) {
            member.info = info;
            this.publish(path, { ...this.counts(path), joins: [], leaves: [], updates: [[user, info]] });
        }

        return Promise.resolve(true);
    }

    cluster(): Promise<{ nodes: number; sockets: number; users: number }> {

        const stats = this.sink()?.stats?.();
        return Promise.resolve(stats ? { nodes: 1, sockets: stats.sockets, users: this.users.size } : { nodes: 0, sockets: 0, users: 0 });
    }

    // The broker stopped: its node has no sockets left.
    clear(): void {

        this.states.clear();
        this.byUser.clear();
        this.users.clear();
    }

    private counts(path: string): PresenceCount {

        const state = this.states.get(path);
        return { users: state?.users.size ?? 0, sockets: state?.sockets ?? 0, anonymous: state?.anonymous ?? 0 };
    }

    private publish(path: string, change: PresenceChange): void {

        // Presence paths have no filter: delivery is synchronous and cannot fail. No sink: the broker stopped.
        void this.sink()?.deliver({ path: presencePath(path), message: change });
    }

    private index(user: string, path: string): void {

        const paths = this.byUser.get(user) ?? new Set();
        paths.add(path);
        this.byUser.set(user, paths);
    }

    private unindex(user: string, path: string): void {

        const paths = this.byUser.get(user)!;
        paths.delete(path);
        if (!paths.size) {
            this.byUser.delete(user);
        }
    }
}
