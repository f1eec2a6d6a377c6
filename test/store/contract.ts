import { describe, expect, it } from 'vitest';
import type {
  AuditRecord,
  RecordingRecord,
  SecretRecord,
  SessionRecord,
  Store,
  TicketRecord,
  WorkflowRecord,
} from '../../src/store/types.js';

/**
 * One contract, every adapter: SQLite and PostgreSQL must behave identically here.
 * `open` returns a fresh, migrated, empty store.
 */
export function storeContract(name: string, open: () => Promise<Store>): void {
  describe(`store contract: ${name}`, () => {
    const secret = (overrides: Partial<SecretRecord> = {}): SecretRecord => ({
      id: `sec_${Math.random().toString(36).slice(2, 12)}`,
      name: 'github',
      kind: 'generic',
      allow: ['conn:github', 'host:*.github.com'],
      placements: ['credential', 'sql:github'],
      wrappedKey: Buffer.from([1, 2, 3]),
      keyId: 'kid1',
      ciphertext: Buffer.from([4, 5, 6]),
      fingerprint: 'fp1',
      createdAt: 1000,
      erasedAt: null,
      ...overrides,
    });
    const ticket = (
      overrides: Partial<TicketRecord> & Pick<TicketRecord, 'id' | 'secretId'>,
    ): TicketRecord => ({
      hash: `h_${overrides.id}`,
      principal: 'agent:agt_1',
      destinations: ['conn:github'],
      expiresAt: null,
      maxUses: null,
      uses: 0,
      parentId: null,
      createdAt: 1000,
      revokedAt: null,
      ...overrides,
    });

    it('round-trips meta, secrets and enforces live-name uniqueness', async () => {
      const store = await open();
      try {
        expect(await store.getMeta('x')).toBeNull();
        await store.setMeta('x', '1');
        await store.setMeta('x', '2');
        expect(await store.getMeta('x')).toBe('2');

        const s = secret();
        await store.insertSecret(s);
        expect(await store.getSecretByName('github')).toEqual(s);
        expect(await store.getSecretById(s.id)).toEqual(s);
        await expect(store.insertSecret(secret())).rejects.toMatchObject({ code: 'CC_ERR_ALREADY_EXISTS' });

        expect(await store.eraseSecret(s.id, 2000)).toBe(true);
        expect(await store.eraseSecret(s.id, 3000)).toBe(false);
        expect(await store.getSecretByName('github')).toBeNull();
        const tomb = await store.getSecretById(s.id);
        expect(tomb).toMatchObject({ wrappedKey: null, ciphertext: null, keyId: null, erasedAt: 2000 });
        // The name is free again after erasure.
        const again = secret();
        await store.insertSecret(again);
        expect((await store.listSecrets()).map((x) => x.id)).toEqual([again.id]);
        await store.updateSecretKey(again.id, Buffer.from([9]), 'kid2');
        expect(await store.getSecretById(again.id)).toMatchObject({
          wrappedKey: Buffer.from([9]),
          keyId: 'kid2',
        });
        // Destinations and placements are replaced together; an erased secret's are not.
        expect(await store.updateSecretBindings(again.id, ['host:http://localhost:8080'], ['body'])).toBe(
          true,
        );
        expect(await store.getSecretById(again.id)).toMatchObject({
          allow: ['host:http://localhost:8080'],
          placements: ['body'],
        });
        expect(await store.updateSecretBindings(s.id, ['conn:x'], ['query'])).toBe(false);
        expect(await store.getSecretById(s.id)).toMatchObject({ allow: s.allow, placements: s.placements });
      } finally {
        await store.close();
      }
    });

    it('revokes a ticket tree, and only that tree', async () => {
      const store = await open();
      try {
        const s = secret();
        await store.insertSecret(s);
        await store.insertTicket(ticket({ id: 't1', secretId: s.id }));
        await store.insertTicket(ticket({ id: 't2', secretId: s.id, parentId: 't1' }));
        await store.insertTicket(ticket({ id: 't3', secretId: s.id, parentId: 't2' }));
        await store.insertTicket(ticket({ id: 't4', secretId: s.id, parentId: 't1' }));
        await store.insertTicket(ticket({ id: 'u1', secretId: s.id }));
        expect((await store.getTicketByHash('h_t3'))?.id).toBe('t3');
        expect((await store.revokeTicketTree('t2', 5000)).sort()).toEqual(['t2', 't3']);
        expect((await store.revokeTicketTree('t1', 6000)).sort()).toEqual(['t1', 't4']);
        expect((await store.getTicketById('t3'))?.revokedAt).toBe(5000);
        expect((await store.getTicketById('u1'))?.revokedAt).toBeNull();
        expect((await store.listTickets({ now: 2000 })).map((t) => t.id)).toEqual(['u1']);
        expect((await store.listTickets({ includeInactive: true })).length).toBe(5);
        expect(await store.revokeTicketsOfSecret(s.id, 7000)).toEqual(['u1']);
        await expect(
          store.insertTicket(ticket({ id: 't1', secretId: s.id, hash: 'other' })),
        ).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
      } finally {
        await store.close();
      }
    });

    it('consumes uses along a chain, all or nothing', async () => {
      const store = await open();
      try {
        const s = secret();
        await store.insertSecret(s);
        await store.insertTicket(ticket({ id: 'p', secretId: s.id, maxUses: 2 }));
        await store.insertTicket(ticket({ id: 'c', secretId: s.id, parentId: 'p', maxUses: 5 }));
        await store.insertTicket(ticket({ id: 'free', secretId: s.id }));
        expect(await store.consumeUses(['c', 'p'])).toBe(true);
        expect(await store.consumeUses(['c', 'p'])).toBe(true);
        expect(await store.consumeUses(['c', 'p'])).toBe(false);
        expect((await store.getTicketById('c'))?.uses).toBe(2);
        expect((await store.getTicketById('p'))?.uses).toBe(2);
        expect(await store.consumeUses(['free'])).toBe(true);
        expect((await store.getTicketById('free'))?.uses).toBe(0);
      } finally {
        await store.close();
      }
    });

    it('keeps agent SSH keys: one live registration per key, removed ones kept', async () => {
      const store = await open();
      try {
        const agent = {
          id: 'agt_k',
          name: 'keyed',
          groups: [],
          keyHash: 'khk',
          createdAt: 1,
          expiresAt: null,
          revokedAt: null,
        };
        await store.insertAgent(agent);
        const key = {
          id: 'ssk_1',
          agentId: 'agt_k',
          fingerprint: 'SHA256:abc',
          keyType: 'ssh-ed25519',
          publicKey: 'AAAAC3Nz',
          comment: 'laptop',
          createdAt: 10,
          removedAt: null,
        };
        await store.insertAgentSshKey(key);
        expect(await store.getLiveAgentSshKey('SHA256:abc')).toEqual(key);
        // The same key cannot be live twice (for this agent or another).
        await expect(store.insertAgentSshKey({ ...key, id: 'ssk_2' })).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
        expect(await store.listAgentSshKeys('agt_k', false)).toEqual([key]);
        expect(await store.removeAgentSshKey('ssk_1', 20)).toBe(true);
        expect(await store.removeAgentSshKey('ssk_1', 30)).toBe(false);
        expect(await store.getLiveAgentSshKey('SHA256:abc')).toBeNull();
        expect(await store.listAgentSshKeys('agt_k', false)).toEqual([]);
        expect(await store.listAgentSshKeys('agt_k', true)).toEqual([{ ...key, removedAt: 20 }]);
        // Once removed, the key may be registered again.
        await store.insertAgentSshKey({ ...key, id: 'ssk_3', createdAt: 40 });
        expect((await store.getLiveAgentSshKey('SHA256:abc'))?.id).toBe('ssk_3');
      } finally {
        await store.close();
      }
    });

    it('keeps agents and connections', async () => {
      const store = await open();
      try {
        const agent = {
          id: 'agt_1',
          name: 'builder',
          groups: ['ci'],
          keyHash: 'kh',
          createdAt: 1,
          expiresAt: 99,
          revokedAt: null,
        };
        await store.insertAgent(agent);
        expect(await store.getAgentByKeyHash('kh')).toEqual(agent);
        expect(await store.getAgentByName('builder')).toEqual(agent);
        expect(await store.revokeAgent('agt_1', 50)).toBe(true);
        expect(await store.revokeAgent('agt_1', 60)).toBe(false);
        expect(await store.getAgentByName('builder')).toBeNull();
        expect((await store.getAgentById('agt_1'))?.revokedAt).toBe(50);
        await store.insertAgent({ ...agent, id: 'agt_2', keyHash: 'kh2' });
        expect((await store.listAgents()).map((a) => a.id).sort()).toEqual(['agt_1', 'agt_2']);

        const conn = {
          id: 'con_1',
          name: 'github',
          type: 'http',
          url: 'https://api.github.com',
          credential: 'github',
          injectHeaders: { Authorization: 'Bearer {{secret:github}}' },
          rules: { readOnly: true, maskColumns: ['*email*', 'ssn'], rowLimit: 100 },
          createdAt: 5,
          via: null,
        };
        await store.insertConnection(conn);
        expect(await store.getConnection('github')).toEqual(conn);
        await expect(store.insertConnection({ ...conn, id: 'con_2' })).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
        expect(await store.listConnections()).toEqual([conn]);
        expect(await store.deleteConnection('github')).toBe(true);
        expect(await store.deleteConnection('github')).toBe(false);
        const relayed = { ...conn, id: 'con_3', name: 'db', via: 'site-a' };
        await store.insertConnection(relayed);
        expect(await store.getConnection('db')).toEqual(relayed);
      } finally {
        await store.close();
      }
    });

    it('keeps relays: live-name uniqueness, revocation, last seen', async () => {
      const store = await open();
      try {
        const relay = {
          id: 'rly_1',
          name: 'site-a',
          keyHash: 'rh1',
          createdAt: 10,
          revokedAt: null,
          lastSeenAt: null,
          lastAddress: null,
          lastReplica: null,
        };
        await store.insertRelay(relay);
        expect(await store.getRelayByName('site-a')).toEqual(relay);
        expect(await store.getRelayByKeyHash('rh1')).toEqual(relay);
        await expect(store.insertRelay({ ...relay, id: 'rly_2', keyHash: 'rh2' })).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
        await store.touchRelay('rly_1', 20, '10.0.0.2', 'gw-0/1');
        expect(await store.getRelayByName('site-a')).toMatchObject({
          lastSeenAt: 20,
          lastAddress: '10.0.0.2',
          lastReplica: 'gw-0/1',
        });
        expect(await store.revokeRelay('rly_1', 30)).toBe(true);
        expect(await store.revokeRelay('rly_1', 40)).toBe(false);
        expect(await store.getRelayByName('site-a')).toBeNull();
        // A revoked relay is not seen any more, and its name is free again.
        await store.touchRelay('rly_1', 50, '10.0.0.3', 'gw-1/1');
        expect(await store.getRelayByKeyHash('rh1')).toMatchObject({
          revokedAt: 30,
          lastSeenAt: 20,
          lastReplica: 'gw-0/1',
        });
        await store.insertRelay({ ...relay, id: 'rly_2', keyHash: 'rh2' });
        expect((await store.listRelays()).map((r) => r.id).sort()).toEqual(['rly_1', 'rly_2']);
      } finally {
        await store.close();
      }
    });

    it('keeps session recordings, newest first, filtered and paged', async () => {
      const store = await open();
      try {
        const session = (id: string, startedAt: number, principal: string | null): SessionRecord => ({
          id,
          frontend: 'http',
          principal,
          connection: 'github',
          startedAt,
          endedAt: startedAt + 5,
          outcome: 'ok',
          summary: { method: 'GET', path: '/c/github/user', status: 200, tickets: ['tkt_1'] },
        });
        const records = [
          session('ses_1', 10, 'agent:agt_1'),
          session('ses_2', 20, 'agent:agt_2'),
          session('ses_3', 30, 'agent:agt_1'),
          session('ses_4', 40, null),
        ];
        for (const record of records) await store.insertSession(record);
        expect(await store.getSession('ses_2')).toEqual(records[1]);
        expect(await store.getSession('ses_none')).toBeNull();
        expect((await store.listSessions({ limit: 10 })).map((s) => s.id)).toEqual([
          'ses_4',
          'ses_3',
          'ses_2',
          'ses_1',
        ]);
        expect((await store.listSessions({ limit: 2, before: 30 })).map((s) => s.id)).toEqual([
          'ses_2',
          'ses_1',
        ]);
        expect((await store.listSessions({ limit: 10, principal: 'agent:agt_1' })).map((s) => s.id)).toEqual([
          'ses_3',
          'ses_1',
        ]);
        await expect(store.insertSession(records[0]!)).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
        // Retention: the oldest rows before the cut, at most `limit` at a time.
        expect(await store.deleteSessionsBefore(35, 2)).toBe(2);
        expect((await store.listSessions({ limit: 10 })).map((s) => s.id)).toEqual(['ses_4', 'ses_3']);
        expect(await store.deleteSessionsBefore(35, 10)).toBe(1);
        expect(await store.deleteSessionsBefore(35, 10)).toBe(0);
        expect((await store.listSessions({ limit: 10 })).map((s) => s.id)).toEqual(['ses_4']);
      } finally {
        await store.close();
      }
    });

    it('keeps full recordings: filters, order, erasure destroys the data key', async () => {
      const store = await open();
      try {
        const rec = (
          id: string,
          startedAt: number,
          principal: string | null,
          connection: string,
          tickets: string[],
        ): RecordingRecord => ({
          id,
          frontend: 'postgres',
          principal,
          connection,
          startedAt,
          endedAt: startedAt + 7,
          events: 3,
          bytes: 1234,
          chunks: 2,
          hash: `h${id}`,
          location: `${id}.ccr`,
          wrappedKey: Buffer.from([9, 8, 7]),
          tickets,
          createdAt: startedAt + 8,
          erasedAt: null,
        });
        const records = [
          rec('ses_a', 10, 'agent:agt_1', 'pg', ['tkt_1']),
          rec('ses_b', 20, 'agent:agt_2', 'api', ['tkt_2', 'tkt_10']),
          rec('ses_c', 30, 'agent:agt_1', 'api', []),
        ];
        for (const r of records) await store.insertRecording(r);
        expect(await store.getRecording('ses_b')).toEqual(records[1]);
        expect(await store.getRecording('ses_none')).toBeNull();
        const ids = async (filter: Parameters<Store['listRecordings']>[0]) =>
          (await store.listRecordings(filter)).map((r) => r.id);
        expect(await ids({ limit: 10 })).toEqual(['ses_c', 'ses_b', 'ses_a']);
        expect(await ids({ limit: 10, order: 'oldest' })).toEqual(['ses_a', 'ses_b', 'ses_c']);
        expect(await ids({ limit: 10, principal: 'agent:agt_1' })).toEqual(['ses_c', 'ses_a']);
        expect(await ids({ limit: 10, connection: 'api' })).toEqual(['ses_c', 'ses_b']);
        // A ticket id matches whole: tkt_1 is not a prefix match of tkt_10.
        expect(await ids({ limit: 10, ticket: 'tkt_1' })).toEqual(['ses_a']);
        expect(await ids({ limit: 10, ticket: 'tkt_10' })).toEqual(['ses_b']);
        expect(await ids({ limit: 10, since: 20, until: 30 })).toEqual(['ses_b']);
        expect(await ids({ limit: 1 })).toEqual(['ses_c']);
        expect(await store.eraseRecording('ses_a', 99)).toBe(true);
        expect(await store.eraseRecording('ses_a', 100)).toBe(false);
        expect(await store.eraseRecording('ses_none', 100)).toBe(false);
        expect(await store.getRecording('ses_a')).toMatchObject({ wrappedKey: null, erasedAt: 99 });
        expect(await ids({ limit: 10, live: true })).toEqual(['ses_c', 'ses_b']);
        await expect(store.insertRecording(records[1]!)).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
      } finally {
        await store.close();
      }
    });

    it('appends and reads audit records in order, data byte-exact', async () => {
      const store = await open();
      try {
        expect(await store.auditHead()).toBeNull();
        const records: AuditRecord[] = Array.from({ length: 5 }, (_, i) => ({
          seq: i + 1,
          ts: 100 + i,
          type: 'token.issue',
          actor: 'admin',
          data: { z: i, a: 'x', nested: { b: [1, 2], a: null } },
          prevHash: `p${i}`,
          hash: `h${i + 1}`,
        }));
        await store.insertAuditRecords(records);
        expect(await store.auditHead()).toEqual({ seq: 5, hash: 'h5' });
        expect(await store.readAudit(0, 100)).toEqual(records);
        expect(await store.readAudit(2, 2)).toEqual(records.slice(2, 4));
        expect(await store.tailAudit(2)).toEqual(records.slice(3));
        // Key order survives storage (the hash chain is computed over it).
        expect(Object.keys((await store.readAudit(0, 1))[0]!.data)).toEqual(['z', 'a', 'nested']);
        await expect(store.insertAuditRecords([records[0]!])).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
      } finally {
        await store.close();
      }
    });

    it('keeps audit chains: positions per chain, chain heads, fresh seqs, one snapshot (ADR 0015)', async () => {
      const store = await open();
      try {
        const base = { ts: 1, type: 't', actor: 'a', data: {}, prevHash: '', hash: 'h' };
        const seqs = await store.transaction((tx) => tx.allocateAuditSeqs(3), { lock: 'rows' });
        expect(seqs).toHaveLength(3);
        expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
        expect(new Set(seqs).size).toBe(3);
        const [s1, s2, s3] = seqs as [number, number, number];
        const main: AuditRecord = { ...base, seq: s1, hash: 'm1' };
        const inChain: AuditRecord[] = [
          { ...base, seq: s2, chain: 'r_x', chainSeq: 1, hash: 'x1' },
          { ...base, seq: s3, chain: 'r_x', chainSeq: 2, hash: 'x2' },
        ];
        await store.transaction(async (tx) => {
          await tx.insertAuditRecords([main, ...inChain]);
          await tx.setAuditChainHead({ chain: 'r_x', chainSeq: 2, hash: 'x2' });
        });
        expect(await store.readAudit(0, 10)).toEqual([main, ...inChain]);
        expect(await store.readAuditChain('r_x', 1, 10)).toEqual([inChain[1]]);
        expect(await store.readAuditChain('', 0, 10)).toEqual([main]);
        expect(await store.auditChainHead('r_x')).toEqual({ seq: s3, chainSeq: 2, hash: 'x2' });
        expect(await store.auditChainHead('r_none')).toBeNull();
        expect(await store.auditChainHeads()).toEqual([{ chain: 'r_x', chainSeq: 2, hash: 'x2' }]);
        expect(await store.countAudit()).toBe(3);
        // A second record at the same place in a chain is refused.
        await expect(
          store.insertAuditRecords([{ ...base, seq: s3 + 100, chain: 'r_x', chainSeq: 2 }]),
        ).rejects.toMatchObject({ code: 'CC_ERR_ALREADY_EXISTS' });
        const later = await store.transaction((tx) => tx.allocateAuditSeqs(1));
        expect(later[0]).toBeGreaterThan(s3);
        expect(
          await store.readSnapshot(async (db) => [await db.countAudit(), (await db.auditHead())?.seq]),
        ).toEqual([3, s3]);
      } finally {
        await store.close();
      }
    });

    it('rolls back a failed transaction and a failed savepoint only', async () => {
      const store = await open();
      try {
        await expect(
          store.transaction(async (tx) => {
            await tx.setMeta('a', '1');
            throw new Error('boom');
          }),
        ).rejects.toThrow('boom');
        expect(await store.getMeta('a')).toBeNull();

        await store.transaction(async (tx) => {
          await tx.setMeta('b', '1');
          await expect(
            tx.savepoint(async () => {
              await tx.setMeta('c', '1');
              throw new Error('inner');
            }),
          ).rejects.toThrow('inner');
          await tx.savepoint(async () => tx.setMeta('d', '1'));
        });
        expect(await store.getMeta('b')).toBe('1');
        expect(await store.getMeta('c')).toBeNull();
        expect(await store.getMeta('d')).toBe('1');
      } finally {
        await store.close();
      }
    });

    it('serialises concurrent transactions', async () => {
      const store = await open();
      try {
        await store.setMeta('n', '0');
        await Promise.all(
          Array.from({ length: 20 }, () =>
            store.transaction(async (tx) => {
              const n = Number(await tx.getMeta('n'));
              await tx.setMeta('n', String(n + 1));
            }),
          ),
        );
        expect(await store.getMeta('n')).toBe('20');
      } finally {
        await store.close();
      }
    });

    it('tells subscribers about published changes', async () => {
      const store = await open();
      try {
        const seen: unknown[] = [];
        const off = store.subscribe((change) => seen.push(change));
        await store.publish({ type: 'ticket.revoked', ids: ['t1'] });
        await expect.poll(() => seen.length).toBe(1);
        expect(seen[0]).toEqual({ type: 'ticket.revoked', ids: ['t1'] });
        off();
      } finally {
        await store.close();
      }
    });

    it('keeps approvals: compare-and-set updates, lookup by fingerprint and requester', async () => {
      const store = await open();
      try {
        const approval = {
          id: 'apr_1',
          fingerprint: 'fp-a',
          requester: 'agent:agt_1',
          status: 'pending' as const,
          createdAt: 10,
          expiresAt: 1000,
          data: { summary: 'DELETE FROM t', decisions: [] },
        };
        await store.insertApproval(approval);
        await store.insertApproval({ ...approval, id: 'apr_2', createdAt: 20, fingerprint: 'fp-b' });
        expect(await store.getApproval('apr_1')).toEqual(approval);
        expect(
          await store.updateApproval({ ...approval, status: 'approved', expiresAt: 2000 }, 'pending'),
        ).toBe(true);
        // A second decision on the same pending request loses the race.
        expect(await store.updateApproval({ ...approval, status: 'denied' }, 'pending')).toBe(false);
        expect((await store.getApproval('apr_1'))?.status).toBe('approved');
        expect((await store.findApprovals('fp-a', 'agent:agt_1')).map((a) => a.id)).toEqual(['apr_1']);
        expect(await store.findApprovals('fp-a', 'agent:agt_2')).toEqual([]);
        expect((await store.listApprovals({ status: 'pending' })).map((a) => a.id)).toEqual(['apr_2']);
        expect((await store.listApprovals({})).map((a) => a.id)).toEqual(['apr_2', 'apr_1']);
      } finally {
        await store.close();
      }
    });

    it('keeps an approval preview beside the operation; decisions leave it as written', async () => {
      const store = await open();
      try {
        const preview = `POST /items\n\n{"note": "é ${'x'.repeat(70_000)}"}`;
        const approval = {
          id: 'apr_p',
          fingerprint: 'fp-p',
          requester: 'agent:agt_1',
          status: 'pending' as const,
          createdAt: 10,
          expiresAt: 1000,
          data: { decisions: [] },
          preview,
        };
        await store.insertApproval(approval);
        expect((await store.getApproval('apr_p'))?.preview).toBe(preview);
        // An update writes status, expiry and data only: the preview stays as inserted.
        const { preview: _dropped, ...withoutPreview } = approval;
        expect(await store.updateApproval({ ...withoutPreview, status: 'approved' }, 'pending')).toBe(true);
        expect(await store.getApproval('apr_p')).toEqual({ ...approval, status: 'approved' });
        expect((await store.listApprovals({}))[0]?.preview).toBe(preview);
      } finally {
        await store.close();
      }
    });

    it('lists workflow runs (roots only), newest first', async () => {
      const store = await open();
      try {
        const node = (id: string, parentId: string | null, createdAt: number): WorkflowRecord => ({
          id,
          name: `n-${id}`,
          parentId,
          rootId: parentId === null ? id : 'wfl_r1',
          startedBy: 'admin:test',
          groups: [],
          keyHash: `kh-${id}`,
          status: 'active',
          expiresAt: null,
          createdAt,
          endedAt: null,
        });
        await store.insertWorkflow(node('wfl_r1', null, 10));
        await store.insertWorkflow(node('wfl_c1', 'wfl_r1', 30));
        await store.insertWorkflow(node('wfl_r2', null, 20));
        expect((await store.listWorkflowRuns(10)).map((w) => w.id)).toEqual(['wfl_r2', 'wfl_r1']);
        expect((await store.listWorkflowRuns(1)).map((w) => w.id)).toEqual(['wfl_r2']);
      } finally {
        await store.close();
      }
    });

    it('keeps workflow trees: subtree listing, ending, ticket membership, expiry', async () => {
      const store = await open();
      try {
        const node = (id: string, parentId: string | null, createdAt: number): WorkflowRecord => ({
          id,
          name: `n-${id}`,
          parentId,
          rootId: 'wfl_root',
          startedBy: 'agent:agt_1',
          groups: ['ci'],
          keyHash: `kh_${id}`,
          status: 'active',
          expiresAt: 9000,
          createdAt,
          endedAt: null,
        });
        const root = node('wfl_root', null, 1);
        await store.insertWorkflow(root);
        await store.insertWorkflow(node('wfl_a', 'wfl_root', 2));
        await store.insertWorkflow(node('wfl_a1', 'wfl_a', 3));
        await store.insertWorkflow(node('wfl_b', 'wfl_root', 4));
        expect(await store.getWorkflow('wfl_root')).toEqual(root);
        expect(await store.getWorkflow('wfl_nope')).toBeNull();
        expect((await store.getWorkflowByKeyHash('kh_wfl_a1'))?.id).toBe('wfl_a1');
        await expect(store.insertWorkflow(node('wfl_c', 'wfl_root', 5))).resolves.toBeUndefined();
        await expect(
          store.insertWorkflow({ ...node('wfl_d', null, 6), keyHash: 'kh_wfl_c' }),
        ).rejects.toMatchObject({
          code: 'CC_ERR_ALREADY_EXISTS',
        });
        expect((await store.listWorkflowSubtree('wfl_root')).map((w) => w.id)).toEqual([
          'wfl_root',
          'wfl_a',
          'wfl_a1',
          'wfl_b',
          'wfl_c',
        ]);
        expect((await store.listWorkflowSubtree('wfl_a')).map((w) => w.id)).toEqual(['wfl_a', 'wfl_a1']);

        const s = secret();
        await store.insertSecret(s);
        await store.insertTicket(ticket({ id: 't1', secretId: s.id, createdAt: 1 }));
        await store.insertTicket(
          ticket({ id: 't2', secretId: s.id, parentId: 't1', createdAt: 2, expiresAt: 5000 }),
        );
        await store.insertTicket(
          ticket({ id: 't3', secretId: s.id, parentId: 't1', createdAt: 3, revokedAt: 7 }),
        );
        await store.addWorkflowTicket('wfl_root', 't1');
        await store.addWorkflowTicket('wfl_a', 't2');
        await store.addWorkflowTicket('wfl_a', 't3');
        expect(await store.listWorkflowTickets('wfl_a')).toEqual(['t2', 't3']);
        expect(await store.listWorkflowTickets('wfl_b')).toEqual([]);
        expect(await store.getTicketWorkflow('t2')).toBe('wfl_a');
        expect(await store.getTicketWorkflow('nope')).toBeNull();

        // Expiry moves earlier only, and never touches revoked tickets.
        expect((await store.expireTickets(['t1', 't2', 't3'], 4000)).sort()).toEqual(['t1', 't2']);
        expect(await store.expireTickets(['t2'], 6000)).toEqual([]);
        expect((await store.getTicketById('t2'))?.expiresAt).toBe(4000);
        expect(await store.expireTickets([], 1)).toEqual([]);

        expect((await store.endWorkflowTree('wfl_a', 'revoked', 100)).sort()).toEqual(['wfl_a', 'wfl_a1']);
        expect(await store.endWorkflowTree('wfl_a', 'ended', 200)).toEqual([]);
        expect(await store.getWorkflow('wfl_a1')).toMatchObject({ status: 'revoked', endedAt: 100 });
        expect((await store.endWorkflowTree('wfl_root', 'ended', 300)).sort()).toEqual([
          'wfl_b',
          'wfl_c',
          'wfl_root',
        ]);
        expect(await store.getWorkflow('wfl_a')).toMatchObject({ status: 'revoked', endedAt: 100 });
      } finally {
        await store.close();
      }
    });

    it('migrating twice is harmless', async () => {
      const store = await open();
      try {
        await store.migrate();
        await store.setMeta('k', 'v');
        await store.migrate();
        expect(await store.getMeta('k')).toBe('v');
      } finally {
        await store.close();
      }
    });
  });
}
