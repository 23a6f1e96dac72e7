// The chat of the demo: sign in as a demo user; rooms are groups the server joins users to (recorded, so a user's
// next socket, on any node, is in them at hello); private messages are publishes aimed at one user; with
// recovery, what was said while a browser was away arrives when it reconnects; the online list is the presence of
// /online, a group every user is in, with each user's alias and the availability the user picks.

import * as Boom from '@hapi/boom';
import type * as Hapi from '@hapi/hapi';

export const users = ['alice', 'bob', 'carol'];
export const rooms = ['lobby', 'random', 'dev'];
export const availabilities = ['available', 'away', 'busy'];
const alias = (user: string): string => user[0]!.toUpperCase() + user.slice(1);

export const page = `<!doctype html>
<meta charset="utf-8">
<title>hapi-pulse chat</title>
<h1>hapi-pulse chat</h1>
<p>Sign in as a demo user. The server joins users to rooms (server-side subscriptions: every socket of the user,
on every node, and later sockets at hello). Private messages are publishes aimed at one user. Messages sent while a
browser is disconnected arrive when it reconnects (recovery). The online list is the presence of a group every
user is in: each user's alias and availability, updated live.</p>
<p><select id="user">${users.map((user) => `<option>${user}</option>`).join('')}</select> <button id="signin">Sign in</button>
<span id="status">signed out</span></p>
<p>I am <select id="availability">${availabilities.map((availability) => `<option>${availability}</option>`).join('')}</select>.
Online: <span id="online"></span></p>
<p>Rooms: <span id="rooms"></span></p>
<p><select id="room">${rooms.map((room) => `<option>${room}</option>`).join('')}</select>
<button id="join">Join</button> <button id="leave">Leave</button>
<input id="text" placeholder="message"> <button id="say">Say</button></p>
<p>Private message to <select id="to">${users.map((user) => `<option>${user}</option>`).join('')}</select>
<input id="dm" placeholder="message"> <button id="send">Send</button></p>
<p><button id="drop">Drop my connection</button> (the server closes the socket; the client reconnects and recovers what it missed)</p>
<pre id="log"></pre>
<script src="/hapi-pulse.min.js"></script>
<script>
    const $ = (id) => document.getElementById(id);
    const log = (line) => { $('log').textContent += line + '\\n'; console.log(line); };
    let client = null;
    let me = null;
    const showRooms = () => { $('rooms').textContent = client.joinedPaths().filter((path) => path.startsWith('/room/')).map((path) => path.slice(6)).join(', '); };
    const call = (method, path, payload) => client.request({ method, path, payload }).catch((err) => log('error: ' + err.message));

    // The members of /online (kept by followPresence: the list, then the diffs): "Alice: available, Bob: busy"
    const showOnline = (online) => {
        const members = [...online.members.values()].sort((a, b) => a.alias.localeCompare(b.alias));
        $('online').textContent = members.map((member) => member.alias + ': ' + member.availability).join(', ');
        const mine = members.find((member) => member.user === me);
        if (mine) { $('availability').value = mine.availability; }          // the same in every tab of the user
    };

    const signIn = async (user) => {
        client = new HapiPulse.Client('ws://' + location.host, { recovery: true });
        client.joined('/room/{id}', (message, flags) => {
            const room = flags.params.id;
            if (flags.joined) { log('joined #' + room); }
            else if (flags.revoked) { log('left #' + room); }
            else if (flags.recovered === false) { log('#' + room + ': messages were lost while away'); }
            else { log('#' + room + ' ' + message.from + ': ' + message.text); }
            showRooms();
        });
        client.joined('/dm', (message, flags) => {
            if (message && !flags.joined && !flags.revoked) { log('private from ' + message.from + ' to ' + message.to + ': ' + message.text); }
        });
        client.onConnect = () => { $('status').textContent = 'signed in as ' + user + ' (socket ' + client.id + ')'; showRooms(); log('connected as ' + user); };
        client.onDisconnect = (willReconnect) => log('disconnected' + (willReconnect ? ', reconnecting' : ''));
        me = user;
        await client.connect({ auth: { headers: { authorization: 'Demo ' + user } } });
        await client.followPresence('/online', showOnline);
    };

    $('signin').onclick = () => signIn($('user').value).catch((err) => log('error: ' + err.message));
    $('join').onclick = () => call('POST', '/rooms/' + $('room').value + '/members');
    $('leave').onclick = () => call('DELETE', '/rooms/' + $('room').value + '/members');
    $('say').onclick = () => call('POST', '/rooms/' + $('room').value + '/messages', { text: $('text').value });
    $('send').onclick = () => call('POST', '/users/' + $('to').value + '/messages', { text: $('dm').value });
    $('drop').onclick = () => call('POST', '/me/drop');
    $('availability').onchange = () => call('PUT', '/me/availability', { availability: $('availability').value });
    window.chat = { signIn, call, log: () => $('log').textContent, rooms: () => client.joinedPaths(), online: () => $('online').textContent };
</script>`;

const userOf = (request: Hapi.Request): string => (request.auth.credentials as { user: string }).user;

// The sign-in, before hapi-pulse is registered with `auth: { type: 'direct', index: true, route: { strategy: 'demo', mode: 'optional' } }`.
// Stands in for a real one: "Demo <user>" for one of the demo users.
export const auth = (server: Hapi.Server): void => {

    server.auth.scheme('demo', () => ({
        authenticate: (request, h) => {

            const user = /^Demo (\w+)$/.exec(String(request.headers.authorization ?? ''))?.[1];
            if (user === undefined || !users.includes(user)) {
                throw Boom.unauthorized(null, 'Demo');
            }

            return h.authenticated({ credentials: { user } });
        }
    }));
    server.auth.strategy('demo', 'demo');
};

// The chat's subscriptions and routes.
export const setup = (server: Hapi.Server): void => {

    server.subscription('/room/{id}', { auth: { mode: 'required' }, history: { size: 100, ttl: 10 * 60 * 1000 } });
    server.subscription('/dm', { auth: { mode: 'required', index: true }, history: { size: 100, ttl: 10 * 60 * 1000 } });

    // Nothing is published on /online: its sockets are its members. A user's info is computed when the user's first
    // socket on this node joins; the availability the user last picked through this node outlives a reconnection.
    const picked = new Map<string, string>();
    const info = (user: string) => ({ user, alias: alias(user), availability: picked.get(user) ?? 'available' });
    server.subscription('/online', { auth: { mode: 'required' }, presence: { info: (credentials) => info((credentials as { user: string }).user) } });

    const room = (request: Hapi.Request): string => {

        const id = String(request.params.id);
        if (!rooms.includes(id)) {
            throw Boom.notFound('No such room');
        }

        return `/room/${id}`;
    };

    server.route([
        { method: 'GET', path: '/chat', handler: (_request, h) => h.response(page).type('text/html') },
        {
            method: 'POST',
            path: '/rooms/{id}/members',
            options: { auth: 'demo' },
            handler: async (request) => {

                await server.subscribeUser(userOf(request), room(request), { persist: true });
                return { members: await server.groupMembers(room(request)) };
            }
        },
        {
            method: 'DELETE',
            path: '/rooms/{id}/members',
            options: { auth: 'demo' },
            handler: async (request) => {

                await server.unsubscribeUser(userOf(request), room(request));
                return { members: await server.groupMembers(room(request)) };
            }
        },
        {
            method: 'POST',
            path: '/rooms/{id}/messages',
            options: { auth: 'demo' },
            handler: async (request) => {

                await server.publish(room(request), { from: userOf(request), text: String((request.payload as { text?: unknown } | null)?.text ?? '') });
                return { sent: true };
            }
        },
        {
            method: 'PUT',
            path: '/me/availability',
            options: { auth: 'demo' },
            handler: async (request) => {

                const availability = String((request.payload as { availability?: unknown } | null)?.availability);
                if (!availabilities.includes(availability)) {
                    throw Boom.badRequest('Availability must be one of: ' + availabilities.join(', '));
                }

                const user = userOf(request);
                picked.set(user, availability);
                if (!await server.presence.update('/online', user, info(user))) {          // the others see it in their next diff
                    throw Boom.conflict('Not online');
                }

                return { availability };
            }
        },
        {
            method: 'POST',
            path: '/me/drop',
            options: { auth: 'demo' },
            handler: (request) => {

                const socket = request.socket;
                if (!socket) {
                    throw Boom.badRequest('Only over the socket');
                }

                setTimeout(() => void socket.disconnect(), 50);            // after the reply
                return { dropping: socket.id };
            }
        },
        {
            method: 'POST',
            path: '/users/{to}/messages',
            options: { auth: 'demo' },
            handler: async (request) => {

                const to = String(request.params.to);
                if (!users.includes(to)) {
                    throw Boom.notFound('No such user');
                }

                const message = { from: userOf(request), to, text: String((request.payload as { text?: unknown } | null)?.text ?? '') };
                await server.publish('/dm', message, { user: to });
                if (to !== message.from) {
                    await server.publish('/dm', message, { user: message.from });     // the sender's other tabs see it too
                }

                return { sent: true };
            }
        }
    ]);
};

// Every demo user starts in the lobby, can receive private messages and is online while connected, on whichever
// node they connect.
export const seed = async (server: Hapi.Server): Promise<void> => {

    for (const user of users) {
        await server.subscribeUser(user, ['/room/lobby', '/dm', '/online'], { persist: true });
    }
};
