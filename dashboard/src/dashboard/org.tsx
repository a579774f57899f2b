// An organization's view: usage bars, the period, 12 periods of history, alerts, plan and
// subscription history, corrections, memberships and revenue; live through usageUpdated and
// usageAlerts.
import { useEffect, useMemo, useState } from 'preact/hooks';
import type { Client } from 'graphql-ws';
import {
  AlertStreamDocument,
  OrgViewDocument,
  UsageUpdatedDocument,
  type AlertFragment,
  type AlertStreamSubscription,
  type AlertStreamSubscriptionVariables,
  type CorrectionFragment,
  type OrgViewQuery,
  type OrgViewQueryVariables,
  type SummaryFragment,
  type UsageUpdatedSubscription,
  type UsageUpdatedSubscriptionVariables,
} from '../generated/graphql';
import { errorAt, query, subscribe, type GraphQLError } from '../api';
import { NEAR_LIMIT_PCT, daysLeft, decimal, money, monthLabel, titleCase, when } from '../format';
import { UsageBars } from '../bars';
import { AlertsFeed, HistoryChart, Notice, Section, type HistoryPoint } from './parts';

type Org = NonNullable<OrgViewQuery['organization']>;

interface Props {
  endpoint: string;
  token: string;
  client: Client;
  /** null: the token's own organization. */
  id: string | null;
  /** Bumped when the live connection comes back, to reload what it may have missed. */
  epoch: number;
}

function refusal(errors: GraphQLError[]): string {
  const e = errorAt(errors, 'organization') ?? errors[0];
  switch (e?.extensions?.code) {
    case 'NOT_FOUND':
      return 'No organization with this id is visible to your token.';
    case 'FORBIDDEN':
      return 'Your role may not read this organization’s usage.';
    case 'UNAUTHENTICATED':
      return 'The token was refused (expired or not signed by this server).';
    default:
      return e ? `The organization could not be loaded: ${e.message}` : 'The organization could not be loaded.';
  }
}

export function OrgView({ endpoint, token, client, id, epoch }: Props) {
  const [org, setOrg] = useState<Org | null>(null);
  const [errors, setErrors] = useState<GraphQLError[]>([]);
  const [usage, setUsage] = useState<SummaryFragment | null>(null);
  const [alerts, setAlerts] = useState<AlertFragment[]>([]);
  const [failed, setFailed] = useState<string | null>(null);

  useEffect(() => {
    let stop = false;
    query<OrgViewQuery, OrgViewQueryVariables>(endpoint, token, OrgViewDocument, { id }).then((r) => {
      if (stop) return;
      if (!r.data?.organization) {
        setFailed(refusal(r.errors));
        return;
      }
      setFailed(null);
      setOrg(r.data.organization);
      setUsage(r.data.organization.usage);
      setAlerts(r.data.usageAlerts?.nodes ?? []);
      setErrors(r.errors);
    });
    return () => {
      stop = true;
    };
  }, [endpoint, token, id, epoch]);

  // Live: the summary afresh after each change, and each alert as it is raised.
  const orgId = org?.id;
  useEffect(() => {
    if (!orgId) return;
    const vars = { id };
    const offUsage = subscribe<UsageUpdatedSubscription, UsageUpdatedSubscriptionVariables>(
      client,
      UsageUpdatedDocument,
      vars,
      (d) => setUsage(d.usageUpdated),
      () => {},
    );
    const offAlerts = subscribe<AlertStreamSubscription, AlertStreamSubscriptionVariables>(
      client,
      AlertStreamDocument,
      vars,
      (d) =>
        setAlerts((prev) =>
          prev.some((a) => a.id === d.usageAlerts.id) ? prev : [d.usageAlerts, ...prev].slice(0, 50),
        ),
      () => {},
    );
    return () => {
      offUsage();
      offAlerts();
    };
  }, [client, orgId, id]);

  // The near-limit threshold the server uses shows in its NEAR_LIMIT alerts.
  const nearPct = alerts.find((a) => a.kind === 'NEAR_LIMIT')?.thresholdPct ?? NEAR_LIMIT_PCT;

  // The chart's last column is the current period, kept live from usageUpdated.
  const history = useMemo(() => {
    if (!org) return [];
    const byMetric = new Map<string, { name: string; unit: string; points: HistoryPoint[] }>();
    for (const m of usage?.metrics ?? org.usage.metrics) {
      byMetric.set(m.metric.code, { name: m.metric.name, unit: m.metric.unit, points: [] });
    }
    for (const period of org.usageHistory) {
      const live = usage && period.periodStart === usage.periodStart ? usage : null;
      for (const [code, series] of byMetric) {
        const m = (live?.metrics ?? period.metrics).find((x) => x.metric.code === code);
        series.points.push({
          periodStart: period.periodStart,
          used: m?.used ?? '0',
          allowance: m?.allowance ?? null,
          utilizationPct: m?.utilizationPct ?? null,
        });
      }
    }
    return [...byMetric.entries()];
  }, [org, usage]);

  if (failed) return <Notice tone="error">{failed}</Notice>;
  if (!org || !usage) return <p class="loading">Loading the organization…</p>;

  const corrections: CorrectionFragment[] = [
    ...(org.credits?.nodes ?? []),
    ...(org.adjustments?.nodes ?? []),
    ...(org.resets?.nodes ?? []),
    ...(org.reversals?.nodes ?? []),
  ].sort((a, b) => (a.recordedAt < b.recordedAt ? 1 : -1));
  const revenue = (org.revenue ?? []).filter((r) => r.paymentsCount > 0);
  const plans = org.membershipPlans ?? [];
  const customers = org.customers?.nodes ?? [];
  const left = daysLeft(org.currentPeriod.end);

  return (
    <div class="org" data-org-id={org.id}>
      <header class="org__head">
        <div>
          <h1 data-testid="org-name">{org.name}</h1>
          <p class="muted">
            {org.plan ? `${org.plan.name} plan · ${money(org.plan.priceMonthly, org.plan.currency)} a month` : 'No plan'} ·{' '}
            <span class={`status status--${org.status.toLowerCase()}`}>{titleCase(org.status)}</span>
            {org.trialEndsAt ? ` · trial ends ${when(org.trialEndsAt)}` : ''}
          </p>
        </div>
        <p class="period" data-testid="period">
          <span>
            {org.currentPeriod.start} – {org.currentPeriod.end}
          </span>
          <strong>
            {left} {left === 1 ? 'day' : 'days'} left
          </strong>
        </p>
      </header>

      <div class="grid">
        <Section id="usage" title="Usage this period">
          {/* Always one line, so the bars never move when it changes. */}
          <p class={usage.hasExceededLimits ? 'summary summary--exceeded' : 'summary'} data-testid="summary">
            {usage.hasExceededLimits ? 'Some limits are exceeded this period.' : 'Every metric is within its limit.'}
          </p>
          <UsageBars metrics={usage.metrics} nearPct={nearPct} />
        </Section>

        <Section id="alerts" title="Alerts">
          <AlertsFeed alerts={alerts} />
        </Section>

        <Section id="history" title="Last 12 periods" wide>
          <div class="charts">
            {history.map(([code, s]) => (
              <HistoryChart key={code} name={s.name} unit={s.unit} points={s.points} />
            ))}
          </div>
        </Section>

        <Section id="subscription" title="Plan and subscription history">
          {errorAt(errors, 'organization', 'subscriptionHistory') ? (
            <p class="muted">Not available to your role.</p>
          ) : org.subscriptionHistory.nodes.length ? (
            <div class="table-wrap" tabIndex={0}>
              <table>
                <thead>
                  <tr>
                    <th scope="col">Date</th>
                    <th scope="col">Change</th>
                    <th scope="col">Plan</th>
                    <th scope="col">By</th>
                  </tr>
                </thead>
                <tbody>
                  {org.subscriptionHistory.nodes.map((c) => (
                    <tr key={c.id}>
                      <td>{c.effectiveDate}</td>
                      <td>{titleCase(c.changeType)}</td>
                      <td>
                        {c.oldPlan?.name ?? '—'} → {c.newPlan?.name ?? '—'}
                      </td>
                      <td>{c.createdBy ?? (c.amountPaid ? `Stripe (${decimal(c.amountPaid)})` : 'Stripe')}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : (
            <p class="muted">No plan changes yet.</p>
          )}
        </Section>

        <Section id="corrections" title="Credits and corrections">
          {corrections.length ? (
            <ul class="list">
              {corrections.map((c) => (
                <li key={c.id} data-kind={c.kind}>
                  <strong>{titleCase(c.kind)}</strong> {c.metric.name}{' '}
                  {c.kind === 'RESET' ? '' : `${Number(c.quantity) > 0 ? '+' : ''}${decimal(c.quantity)} ${c.metric.unit}`}
                  <span class="muted">
                    {' '}
                    · {monthLabel(c.periodStart)} · {c.reason ?? 'no reason given'}
                    {c.actor ? ` · ${c.actor}` : ''}
                  </span>
                </li>
              ))}
            </ul>
          ) : (
            <p class="muted">No credits or corrections.</p>
          )}
        </Section>

        {revenue.length ? (
          <Section id="revenue" title="Revenue">
            <div class="table-wrap" tabIndex={0}>
              <table>
                <thead>
                  <tr>
                    <th scope="col">Period</th>
                    <th scope="col">Payments</th>
                    <th scope="col" class="num">Gross</th>
                    <th scope="col" class="num">Fees</th>
                    <th scope="col" class="num">Net</th>
                  </tr>
                </thead>
                <tbody>
                  {revenue.map((r) => (
                    <tr key={`${r.periodStart}-${r.currency}`}>
                      <td>{monthLabel(r.periodStart)}</td>
                      <td>{r.paymentsCount}</td>
                      <td class="num">{money(r.grossAmount, r.currency)}</td>
                      <td class="num">{money(r.applicationFees, r.currency)}</td>
                      <td class="num">{money(r.netAmount, r.currency)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </Section>
        ) : null}

        {plans.length || customers.length ? (
          <Section id="memberships" title="Memberships">
            {plans.length ? (
              <ul class="list">
                {plans.map((p) => (
                  <li key={p.code}>
                    <strong>{p.name}</strong> · {p.servicesPerCycle} services a {p.interval.toLowerCase()} ·{' '}
                    {money(p.price, p.currency)}
                    {p.active ? '' : ' · inactive'}
                  </li>
                ))}
              </ul>
            ) : null}
            {customers.length ? (
              <div class="table-wrap" tabIndex={0}>
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Customer</th>
                      <th scope="col">Membership</th>
                      <th scope="col" class="num">Used / allowance</th>
                    </tr>
                  </thead>
                  <tbody>
                    {customers.map((c) => (
                      <tr key={c.id}>
                        <td>{c.name}</td>
                        <td>
                          {c.activeMembership
                            ? `${c.activeMembership.plan.name} (${titleCase(c.activeMembership.status)})`
                            : '—'}
                        </td>
                        <td class="num">
                          {c.activeMembership
                            ? `${decimal(c.activeMembership.usage.used)} / ${decimal(c.activeMembership.usage.totalAllowance)}`
                            : ''}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            ) : null}
          </Section>
        ) : null}
      </div>
    </div>
  );
}
