// The platform team's view: organizations near or past their limits (sortable), every organization
// by a click, revenue per period, and the live alert stream of every organization.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import type { Client } from 'graphql-ws';
import {
  AlertStreamDocument,
  PlatformViewDocument,
  type AlertFragment,
  type AlertStreamSubscription,
  type AlertStreamSubscriptionVariables,
  type PlatformViewQuery,
  type PlatformViewQueryVariables,
} from '../generated/graphql';
import { query, subscribe } from '../api';
import { NEAR_LIMIT_PCT, barState, decimal, money, monthLabel, pct, titleCase } from '../format';
import { AlertsFeed, Notice, Section } from './parts';
import { orgHref } from './session';

type Row = PlatformViewQuery['usageSummaries']['nodes'][number];
type SortKey = 'utilization' | 'name' | 'plan' | 'exceeded';

interface Props {
  endpoint: string;
  token: string;
  client: Client;
  epoch: number;
}

function peak(row: Row) {
  let best: Row['metrics'][number] | null = null;
  for (const m of row.metrics) {
    if (m.utilizationPct != null && (best == null || m.utilizationPct > (best.utilizationPct ?? -1))) best = m;
  }
  return best;
}

const COLUMNS: { key: SortKey; label: string }[] = [
  { key: 'name', label: 'Organization' },
  { key: 'plan', label: 'Plan' },
  { key: 'utilization', label: 'Highest utilization' },
  { key: 'exceeded', label: 'Limits exceeded' },
];

export function PlatformView({ endpoint, token, client, epoch }: Props) {
  const [data, setData] = useState<PlatformViewQuery | null>(null);
  const [failed, setFailed] = useState<string | null>(null);
  const [alerts, setAlerts] = useState<AlertFragment[]>([]);
  const [minPct, setMinPct] = useState(NEAR_LIMIT_PCT);
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: 'utilization', desc: true });
  const [tick, setTick] = useState(0);
  const timer = useRef<number | undefined>(undefined);

  useEffect(() => {
    let stop = false;
    query<PlatformViewQuery, PlatformViewQueryVariables>(endpoint, token, PlatformViewDocument, { minPct }).then(
      (r) => {
        if (stop) return;
        if (!r.data) {
          setFailed(r.errors[0]?.message ?? 'the platform view could not be loaded');
          return;
        }
        setFailed(null);
        setData(r.data);
        setAlerts((prev) => {
          const seen = new Set(prev.map((a) => a.id));
          return [...prev, ...(r.data?.usageAlerts.nodes ?? []).filter((a) => !seen.has(a.id))]
            .sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0))
            .slice(0, 50);
        });
      },
    );
    return () => {
      stop = true;
    };
  }, [endpoint, token, minPct, epoch, tick]);

  // Every organization's alerts; each one also refreshes the list (a burst reloads it once).
  useEffect(() => {
    return subscribe<AlertStreamSubscription, AlertStreamSubscriptionVariables>(
      client,
      AlertStreamDocument,
      { id: null },
      (d) => {
        setAlerts((prev) =>
          prev.some((a) => a.id === d.usageAlerts.id) ? prev : [d.usageAlerts, ...prev].slice(0, 50),
        );
        window.clearTimeout(timer.current);
        timer.current = window.setTimeout(() => setTick((t) => t + 1), 300);
      },
      () => {},
    );
  }, [client]);

  const rows = useMemo(() => {
    const list = [...(data?.usageSummaries.nodes ?? [])];
    const dir = sort.desc ? -1 : 1;
    const key = (r: Row): string | number => {
      switch (sort.key) {
        case 'name':
          return r.organization.name.toLowerCase();
        case 'plan':
          return r.plan?.name.toLowerCase() ?? '';
        case 'exceeded':
          return r.metrics.filter((m) => m.exceeded).length;
        default:
          return peak(r)?.utilizationPct ?? -1;
      }
    };
    // Ties keep a stable order by name.
    return list.sort((a, b) => {
      const ka = key(a);
      const kb = key(b);
      if (ka < kb) return -dir;
      if (ka > kb) return dir;
      return a.organization.name.localeCompare(b.organization.name);
    });
  }, [data, sort]);

  if (failed) return <Notice tone="error">{failed}</Notice>;
  if (!data) return <p class="loading">Loading the platform view…</p>;

  const toggle = (key: SortKey) =>
    setSort((s) => (s.key === key ? { key, desc: !s.desc } : { key, desc: key === 'utilization' || key === 'exceeded' }));

  return (
    <div class="platform">
      <header class="org__head">
        <div>
          <h1>Platform</h1>
          <p class="muted">
            {data.organizations.totalCount} organizations · {data.usageSummaries.totalCount} at or above {minPct}% of a
            limit this period
          </p>
        </div>
      </header>
      <div class="grid">
        <Section id="near" title="Near or past their limits" wide>
          <label class="threshold">
            Utilization at least{' '}
            <input
              type="number"
              min={0}
              max={1000}
              step={5}
              value={minPct}
              onChange={(e) => {
                const v = Number((e.target as HTMLInputElement).value);
                if (Number.isFinite(v) && v >= 0) setMinPct(v);
              }}
            />
            %
          </label>
          {data.usageSummaries.totalCount > rows.length ? (
            <p class="muted">
              The first {rows.length} of {data.usageSummaries.totalCount} by slug; raise the threshold to narrow them.
            </p>
          ) : null}
          {rows.length ? (
            <div class="table-wrap" tabIndex={0}>
              <table data-testid="near-table">
                <thead>
                  <tr>
                    {COLUMNS.map((c) => (
                      <th
                        key={c.key}
                        scope="col"
                        class={c.key === 'utilization' || c.key === 'exceeded' ? 'num' : undefined}
                        aria-sort={sort.key === c.key ? (sort.desc ? 'descending' : 'ascending') : 'none'}
                      >
                        <button type="button" class="sort" onClick={() => toggle(c.key)} data-sort={c.key}>
                          {c.label}
                          <span class="sort__arrow" aria-hidden="true">
                            {sort.key === c.key ? (sort.desc ? '▼' : '▲') : '↕'}
                          </span>
                        </button>
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {rows.map((r) => {
                    const p = peak(r);
                    const state = p ? barState(p) : 'ok';
                    return (
                      <tr key={r.organization.id} data-org-id={r.organization.id} data-peak-pct={p?.utilizationPct ?? ''}>
                        <td>
                          <a href={orgHref(r.organization.id)}>{r.organization.name}</a>
                        </td>
                        <td>{r.plan?.name ?? '—'}</td>
                        <td class="num">
                          <span class={`chip chip--${state}`}>{pct(p?.utilizationPct)}</span>{' '}
                          <span class="muted">
                            {p ? `${p.metric.name} ${decimal(p.used)} / ${decimal(p.allowance)}` : ''}
                          </span>
                        </td>
                        <td class="num">{r.metrics.filter((m) => m.exceeded).length}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          ) : (
            <p class="muted">No organization is at or above {minPct}% of a limit this period.</p>
          )}
        </Section>

        <Section id="stream" title="Live alerts, every organization">
          <AlertsFeed alerts={alerts} showOrg orgLink={orgHref} />
        </Section>

        <Section id="revenue" title="Revenue per period">
          {data.platformRevenue.some((r) => r.paymentsCount > 0 || r.overageBilled !== '0') ? (
            <div class="table-wrap" tabIndex={0}>
              <table>
                <thead>
                  <tr>
                    <th scope="col">Period</th>
                    <th scope="col" class="num">Gross</th>
                    <th scope="col" class="num">Fees</th>
                    <th scope="col" class="num">Overage</th>
                  </tr>
                </thead>
                <tbody>
                  {data.platformRevenue.map((r) => (
                    <tr key={`${r.periodStart}-${r.currency}`}>
                      <td>{monthLabel(r.periodStart)}</td>
                      <td class="num">{money(r.grossAmount, r.currency)}</td>
                      <td class="num">{money(r.applicationFees, r.currency)}</td>
                      <td class="num">{money(r.overageBilled, r.currency)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : (
            <p class="muted">No payments or billed overage in the last 12 periods.</p>
          )}
        </Section>

        <Section id="orgs" title="All organizations">
          <ul class="list list--orgs">
            {data.organizations.nodes.map((o) => (
              <li key={o.id}>
                <a href={orgHref(o.id)}>{o.name}</a>{' '}
                <span class="muted">
                  {o.plan?.name ?? 'no plan'} · {titleCase(o.status)}
                </span>
              </li>
            ))}
          </ul>
          {data.organizations.totalCount > data.organizations.nodes.length ? (
            <p class="muted">
              The first {data.organizations.nodes.length} of {data.organizations.totalCount}, by slug.
            </p>
          ) : null}
        </Section>
      </div>
    </div>
  );
}
