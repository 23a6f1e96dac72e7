// The Redis broker's presence store: the members of every presence path, shared by every node of the cluster.
//
// Keys (under the broker's prefix; the scripts build them from it, so this needs a single Redis, not a cluster):
//   P:c:<path>   hash   users, sockets, anonymous: the counts, kept by the scripts (read in constant time)
//   P:u:<path>   hash   user -> its sockets on the path, all nodes together
//   P:i:<path>   hash   user -> info JSON
//   P:p:<user>   set    the paths the user is a member of
//   P:n:<node>   hash   ["<path>","<user>"] -> that node's sockets (user "" for anonymous ones)
//   P:nu:<node>  set    the users the node holds sockets of (presence paths or not)
//   P:users      hash   user -> the number of nodes holding it: HLEN is the cluster's distinct users
//   P:leases     zset   node -> end of its lease (ms, Redis clock)
//   P:stats      hash   node -> its open sockets, as the node last reported them
//   P:secret     string the key of member ids, made once
//
// Every node renews its lease every lease/3 (± 20%, so that nodes spread out). A lease that ran out is dead for
// good: the node's writes are refused from then on, and it starts again under a new node name with everything it
// holds. Every node also reaps dead leases at the same pace: a bounded batch of the dead node's entries per
// script, each one removed as if the node had written 0, with the leaves published, then its users. A killed node's lease ends at
// most `lease` after its last renewal, and a live node reaps it within lease/3 × 1.2 after that: its members leave
// within 1.4 × lease (plus the reaping and the followers' batch interval).
//
// Changes are published by the script that makes them, on the channel of the derived path, as an ordinary
// envelope: every node sees them in the order Redis applied them.

import { createHash, randomBytes } from 'node:crypto';

import { serverUnavailable } from '@hapi/boom';

import type { BrokerSink, PresenceAdmission, PresenceCount, PresenceEntry, PresenceMemberEntry, PresenceNodeUser, PresenceStore } from '../../broker';

export interface RedisPresenceHost {
    readonly prefix: string;
    command(args: string[]): Promise<unknown>;
    sink(): BrokerSink | null;
    log(tags: string[], data: unknown): void;
}

const library = `
local function clock()
    local time = redis.call('TIME')
    return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function touch(changes, order, path)
    local change = changes[path]
    if not change then
        change = { joins = {}, leaves = {}, updates = {}, visible = false }
        changes[path] = change
        order[#order + 1] = path
    end
    return change
end

-- Moves the sockets of one (path, user) by delta, all nodes together.
local function move(pfx, changes, order, path, user, delta, info)
    local counts = pfx .. 'P:c:' .. path
    local change = touch(changes, order, path)
    local total = redis.call('HINCRBY', counts, 'sockets', delta)
    if user == '' then
        redis.call('HINCRBY', counts, 'anonymous', delta)
        change.visible = true
    else
        local users = pfx .. 'P:u:' .. path
        local n = redis.call('HINCRBY', users, user, delta)
        local before = n - delta
        if n <= 0 then
            redis.call('HDEL', users, user)
            redis.call('HDEL', pfx .. 'P:i:' .. path, user)
            redis.call('SREM', pfx .. 'P:p:' .. user, path)
            if before > 0 then
                redis.call('HINCRBY', counts, 'users', -1)
                change.leaves[#change.leaves + 1] = user
                change.visible = true
            end
        elseif before <= 0 then
            redis.call('HSET', pfx .. 'P:i:' .. path, user, info)
            redis.call('SADD', pfx .. 'P:p:' .. user, path)
            redis.call('HINCRBY', counts, 'users', 1)
            change.joins[#change.joins + 1] = { user, info }
            change.visible = true
        end
    end
    if total <= 0 then
        redis.call('DEL', counts)
    end
end

local function alive(pfx, node)
    local lease = redis.call('ZSCORE', pfx .. 'P:leases', node)
    return lease and tonumber(lease) >= clock()
end

-- One node fewer holds the user.
local function drop(users, user)
    if redis.call('HINCRBY', users, user, -1) <= 0 then
        redis.call('HDEL', users, user)
    end
end

local function pairs_json(list)
    local items = {}
    for i, item in ipairs(list) do
        items[i] = '[' .. cjson.encode(item[1]) .. ',' .. cjson.encode(item[2]) .. ']'
    end
    return '[' .. table.concat(items, ',') .. ']'
end

local function strings_json(list)
    local items = {}
    for i, item in ipairs(list) do
        items[i] = cjson.encode(item)
    end
    return '[' .. table.concat(items, ',') .. ']'
end

local function publish(pfx, changes, order)
    for _, path in ipairs(order) do
        local change = changes[path]
        if change.visible then
            local counts = redis.call('HMGET', pfx .. 'P:c:' .. path, 'users', 'sockets', 'anonymous')
            local derived = '/$presence' .. path
            local message = '{"users":' .. (tonumber(counts[1]) or 0) .. ',"sockets":' .. (tonumber(counts[2]) or 0) .. ',"anonymous":' .. (tonumber(counts[3]) or 0) ..
                ',"joins":' .. pairs_json(change.joins) .. ',"leaves":' .. strings_json(change.leaves) .. ',"updates":' .. pairs_json(change.updates) .. '}'
            redis.call('PUBLISH', pfx .. 'p:' .. derived, '-\\n{"path":' .. cjson.encode(derived) .. ',"message":' .. message .. '}')
        end
    end
end
`;

// ARGV: prefix, node, the number of users, then user, present (1 or 0) for each user, then path, user, sockets, info
// for each entry. 0: the node's lease is gone.
const applyScript = library + `
local pfx, node = ARGV[1], ARGV[2]
if not alive(pfx, node) then
    return 0
end
local nodeUsers, users = pfx .. 'P:nu:' .. node, pfx .. 'P:users'
local first = 4 + 2 * tonumber(ARGV[3])
for i = 4, first - 1, 2 do
    local user = ARGV[i]
    if ARGV[i + 1] == '1' then
        if redis.call('SADD', nodeUsers, user) == 1 then
            redis.call('HINCRBY', users, user, 1)
        end
    elseif redis.call('SREM', nodeUsers, user) == 1 then
        drop(users, user)
    end
end
local nodeKey = pfx .. 'P:n:' .. node
local changes, order = {}, {}
for i = first, #ARGV, 4 do
    local path, user, sockets, info = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
    local field = cjson.encode({ path, user })
    local old = tonumber(redis.call('HGET', nodeKey, field) or '0')
    if old ~= sockets then
        if sockets == 0 then
            redis.call('HDEL', nodeKey, field)
        else
            redis.call('HSET', nodeKey, field, sockets)
        end
        move(pfx, changes, order, path, user, sockets - old, info)
    end
end
publish(pfx, changes, order)
return 1
`;

// ARGV: prefix, node, lease ms, the node's open sockets, fresh: 1 to register, secret (kept if Redis lost it).
// 0: the lease is gone.
const renewScript = library + `
local pfx, node = ARGV[1], ARGV[2]
redis.call('SET', pfx .. 'P:secret', ARGV[6], 'NX')
local leases = pfx .. 'P:leases'
local now = clock()
local lease = redis.call('ZSCORE', leases, node)
if ARGV[5] ~= '1' and (not lease or tonumber(lease) < now) then
    return 0
end
redis.call('ZADD', leases, now + tonumber(ARGV[3]), node)
redis.call('HSET', pfx .. 'P:stats', node, ARGV[4])
return 1
`;

// ARGV: prefix, batch size. Removes up to one batch of the entries of one dead node; 0 when none is left.
const reapScript = library + `
local pfx = ARGV[1]
local leases = pfx .. 'P:leases'
local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', clock() - 1, 'LIMIT', 0, 1)
if #dead == 0 then
    return 0
end
local node = dead[1]
local nodeKey = pfx .. 'P:n:' .. node
local fields = redis.call('HRANDFIELD', nodeKey, tonumber(ARGV[2]), 'WITHVALUES')
if #fields == 0 then
    local held = redis.call('SPOP', pfx .. 'P:nu:' .. node, tonumber(ARGV[2]))
    for _, user in ipairs(held) do
        drop(pfx .. 'P:users', user)
    end
    if #held == 0 then
        redis.call('ZREM', leases, node)
        redis.call('HDEL', pfx .. 'P:stats', node)
    end
    return 1
end
local changes, order = {}, {}
for i = 1, #fields, 2 do
    local entry = cjson.decode(fields[i])
    redis.call('HDEL', nodeKey, fields[i])
    move(pfx, changes, order, entry[1], entry[2], -tonumber(fields[i + 1]), 'null')
end
publish(pfx, changes, order)
return 1
`;

// ARGV: prefix, node, then path, user, info, max for each admission. { 1, answer (1 or 0) for each }, or { 0 }: the
// node's lease is gone.
const admitScript = library + `
local pfx, node = ARGV[1], ARGV[2]
if not alive(pfx, node) then
    return { 0 }
end
local nodeKey = pfx .. 'P:n:' .. node
local changes, order = {}, {}
local answers = { 1 }
for i = 3, #ARGV, 4 do
    local path, user, info, max = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local field = cjson.encode({ path, user })
    local answer = 1
    if redis.call('HEXISTS', nodeKey, field) == 0 then
        local member = redis.call('HEXISTS', pfx .. 'P:u:' .. path, user) == 1
        if not member and (tonumber(redis.call('HGET', pfx .. 'P:c:' .. path, 'users')) or 0) >= max then
            answer = 0
        else
            redis.call('HSET', nodeKey, field, 1)
            move(pfx, changes, order, path, user, 1, info)
        end
    end
    answers[#answers + 1] = answer
end
publish(pfx, changes, order)
return answers
`;

// ARGV: prefix, path. { users, sockets, anonymous, user, sockets, info, ... }
const membersScript = `
local pfx, path = ARGV[1], ARGV[2]
local counts = redis.call('HMGET', pfx .. 'P:c:' .. path, 'users', 'sockets', 'anonymous')
local result = { tonumber(counts[1]) or 0, tonumber(counts[2]) or 0, tonumber(counts[3]) or 0 }
local users = redis.call('HGETALL', pfx .. 'P:u:' .. path)
local infos = redis.call('HGETALL', pfx .. 'P:i:' .. path)
local info = {}
for i = 1, #infos, 2 do
    info[infos[i]] = infos[i + 1]
end
for i = 1, #users, 2 do
    result[#result + 1] = users[i]
    result[#result + 1] = tonumber(users[i + 1])
    result[#result + 1] = info[users[i]] or 'null'
end
return result
`;

// ARGV: prefix, path, user, info. 0: not a member.
const updateScript = library + `
local pfx, path, user, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', pfx .. 'P:u:' .. path, user) == 0 then
    return 0
end
if redis.call('HGET', pfx .. 'P:i:' .. path, user) ~= info then
    redis.call('HSET', pfx .. 'P:i:' .. path, user, info)
    local changes, order = {}, {}
    local change = touch(changes, order, path)
    change.updates[1] = { user, info }
    change.visible = true
    publish(pfx, changes, order)
end
return 1
`;

// ARGV: prefix. { nodes, sockets, users }: the live leases, their sockets, the distinct users of the nodes not reaped yet.
const clusterScript = `
local pfx = ARGV[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', pfx .. 'P:leases', now, '+inf')
local sockets = 0
for _, node in ipairs(nodes) do
    sockets = sockets + (tonumber(redis.call('HGET', pfx .. 'P:stats', node)) or 0)
end
return { #nodes, sockets, redis.call('HLEN', pfx .. 'P:users') }
`;

const script = (source: string) => ({ source, sha: createHash('sha1').update(source).digest('hex') });

const scripts = {
    apply: script(applyScript),
    renew: script(renewScript),
    reap: script(reapScript),
    admit: script(admitScript),
    members: script(membersScript),
    update: script(updateScript),
    cluster: script(clusterScript)
};

export interface RedisPresenceOptions {
    lease?: number;                      // ms a node's entries outlive its last renewal, default 15000
}

const reapBatch = 500;                   // entries of a dead node removed per script

export class RedisPresence implements PresenceStore {

    secret = '';
    readonly lease: number;

    private node: string;
    private generation = 0;
    private running: Promise<void> | null = null;        // the renewal loop, from start() to stop()
    private active = false;
    private timer: NodeJS.Timeout | null = null;
    private wake: (() => void) | null = null;

    constructor(private readonly host: RedisPresenceHost, private readonly id: string, options: RedisPresenceOptions) {

        this.lease = options.lease ?? 15000;
        this.node = id;
    }

    async start(): Promise<void> {

        const key = `${this.host.prefix}P:secret`;
        await this.host.command(['SET', key, randomBytes(16).toString('base64url'), 'NX']);
        this.secret = await this.host.command(['GET', key]) as string;
        await this.renew(true);
        this.active = true;
        this.running = this.loop();
    }

    // Gives up the lease: what this node still holds is reaped now (or by the other nodes).
    async stop(): Promise<void> {

        const running = this.running;
        if (!running) {
            return;                                      // never started (Redis could not be reached)
        }

        this.running = null;
        this.active = false;
        clearTimeout(this.timer!);
        this.wake!();
        await running;
        try {
            await this.host.command(['ZADD', `${this.host.prefix}P:leases`, '0', this.node]);
            await this.reap();
        }
        catch (err) {
            this.host.log(['redis', 'presence', 'error'], err);
        }
    }

    // Renews the lease and reaps dead ones every lease/3, ± 20% so that nodes spread out.
    private async loop(): Promise<void> {

        const period = this.lease / 3;
        while (await this.pause(period * (0.8 + Math.random() * 0.4))) {
            try {
                await this.renew();
                await this.reap();
            }
            catch (err) {
                this.host.log(['redis', 'presence', 'renew', 'error'], err);
            }
        }
    }

    // Resolves true after `ms`; false at once when stopped (or when stop() came during a renewal).
    private pause(ms: number): Promise<boolean> {

        return new Promise((resolve) => {

            this.wake = () => resolve(false);
            this.timer = setTimeout(() => resolve(this.active), ms * Number(this.active));
        });
    }

    // ---- Writes ----

    async apply(entries: PresenceEntry[], users: PresenceNodeUser[] = []): Promise<void> {

        const args = [this.host.prefix, this.node, `${users.length}`];
        for (const { user, present } of users) {
            args.push(user, present ? '1' : '0');
        }

        for (const { path, user, sockets, info } of entries) {
            args.push(path, user, `${sockets}`, info);
        }

        if (!Number(await this.run(scripts.apply, args))) {
            await this.lost();
            throw serverUnavailable('Presence lease lost');
        }
    }

    async admit(admissions: PresenceAdmission[]): Promise<boolean[]> {

        const args = [this.host.prefix, this.node];
        for (const { path, user, info, max } of admissions) {
            args.push(path, user, info, `${max}`);
        }

        const reply = await this.run(scripts.admit, args) as number[];
        if (!Number(reply[0])) {
            await this.lost();
            throw serverUnavailable('Presence lease lost');
        }

        return reply.slice(1).map((answer) => !!Number(answer));
    }

    // The lease ran out (this node could not renew it in time): start again under a new name, with everything.
    private async lost(): Promise<void> {

        this.host.log(['redis', 'presence', 'lease'], { node: this.node });
        this.node = `${this.id}.${++this.generation}`;
        await this.renew(true);
        this.host.sink()?.resendPresence?.();
    }

    private async renew(fresh = false): Promise<void> {

        const stats = this.host.sink()?.stats?.() ?? { sockets: 0, users: 0 };
        if (!Number(await this.run(scripts.renew, [this.host.prefix, this.node, `${this.lease}`, `${stats.sockets}`, fresh ? '1' : '0', this.secret]))) {
            await this.lost();
        }
    }

    // One batch of one dead node per script, so that Redis stays responsive; each removes at least one entry.
    private async reap(): Promise<void> {

        while (Number(await this.run(scripts.reap, [this.host.prefix, `${reapBatch}`]))) {
            // next batch
        }
    }

    // ---- Reads ----

    async members(path: string): Promise<PresenceCount & { members: PresenceMemberEntry[] }> {

        const reply = await this.run(scripts.members, [this.host.prefix, path]) as (string | number)[];
        const members: PresenceMemberEntry[] = [];
        for (let i = 3; i < reply.length; i += 3) {
            members.push({ user: reply[i] as string, sockets: Number(reply[i + 1]), info: reply[i + 2] as string });
        }

        return { users: Number(reply[0]), sockets: Number(reply[1]), anonymous: Number(reply[2]), members };
    }

    async count(path: string): Promise<PresenceCount> {

        const [users, sockets, anonymous] = await this.host.command(['HMGET', `${this.host.prefix}P:c:${path}`, 'users', 'sockets', 'anonymous']) as (string | null)[];
        return { users: Number(users), sockets: Number(sockets), anonymous: Number(anonymous) };          // Number(null) is 0
    }

    async paths(user: string): Promise<string[]> {

        return await this.host.command(['SMEMBERS', `${this.host.prefix}P:p:${user}`]) as string[];
    }

    async update(path: string, user: string, info: string): Promise<boolean> {

        return !!Number(await this.run(scripts.update, [this.host.prefix, path, user, info]));
    }

    async cluster(): Promise<{ nodes: number; sockets: number; users: number }> {

        const [nodes, sockets, users] = await this.run(scripts.cluster, [this.host.prefix]) as number[];
        return { nodes: Number(nodes), sockets: Number(sockets), users: Number(users) };
    }

    // By hash first; a Redis that does not know the script yet (a fresh or restarted one) gets its source.
    private async run(script: { source: string; sha: string }, args: string[]): Promise<unknown> {

        try {
            return await this.host.command(['EVALSHA', script.sha, '0', ...args]);
        }
        catch (err) {
            if (!(err as Error).message.includes('NOSCRIPT')) {
                throw err;
            }

            return await this.host.command(['EVAL', script.source, '0', ...args]);
        }
    }
}
