// Message shapes the server children publish.

// A page of catalogue items whose JSON is about `bytes` long (for bytes >= ~300): a realistic publish, which
// compresses about as well as application JSON does. `seq` and `to` as in every benchmark message.
export const catalogue = (bytes: number, seq = 0, to = '/fan'): object => {

    const items: object[] = [];
    const message = { seq, to, items };
    for (let i = 0; JSON.stringify(message).length < bytes; ++i) {
        items.push({ id: 1000 + i, sku: `SKU-${(7919 + i * 104729) % 100000}`, name: `Item ${i}`, price: ((i * 37) % 1000) / 10, currency: 'EUR', stock: (i * 13) % 50, tags: ['new', i % 2 ? 'sale' : 'regular'], updatedAt: new Date(1700000000000 + i * 60000).toISOString() });
    }

    return message;
};
