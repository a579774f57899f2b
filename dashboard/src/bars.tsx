// One bar per metric: used against the allowance, coloured by state. Shared by the dashboard and the
// <tollgate-usage> widget. Every row has the same fixed height and every number tabular figures, so
// a changing number never moves anything around it.
import type { MetricBarFragment } from './generated/graphql';
import { STATE_LABEL, barState, decimal, pct } from './format';

function note(m: MetricBarFragment, state: ReturnType<typeof barState>): string {
  switch (state) {
    case 'unlimited':
      return 'Unlimited on this plan';
    case 'overage':
      return `Overage: ${decimal(m.overageQuantity)} ${m.metric.unit} · ${decimal(m.overageAmount)} owed`;
    case 'exceeded':
      return `Exceeded by ${decimal(m.exceededBy)} ${m.metric.unit}`;
    default:
      return `${decimal(m.remaining)} ${m.metric.unit} left`;
  }
}

export function UsageBar({ m, nearPct }: { m: MetricBarFragment; nearPct: number }) {
  const state = barState(m, nearPct);
  const width = m.utilizationPct == null ? 0 : Math.min(100, Math.max(0, m.utilizationPct));
  const label = `${m.metric.name}: ${decimal(m.used)} of ${m.allowance == null ? 'unlimited' : decimal(m.allowance)} ${m.metric.unit}, ${STATE_LABEL[state].toLowerCase()}`;
  return (
    <li
      class={`bar bar--${state}`}
      data-metric={m.metric.code}
      data-used={m.used}
      data-allowance={m.allowance ?? ''}
      data-state={state}
    >
      <div class="bar__head">
        <span class="bar__name">{m.metric.name}</span>
        <span class="bar__nums">
          <span class="bar__used">{decimal(m.used)}</span>
          <span class="bar__of">/ </span>
          <span class="bar__allowance">{decimal(m.allowance)}</span>
          <span class="bar__pct">{pct(m.utilizationPct)}</span>
        </span>
      </div>
      <div
        class="bar__track"
        role="meter"
        aria-label={label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={m.utilizationPct ?? 0}
        aria-valuetext={label}
      >
        <div class="bar__fill" style={{ width: `${width}%` }} />
        {m.credits !== '0' && Number(m.credits) > 0 ? (
          <span class="bar__credit" title={`includes ${decimal(m.credits)} credited`} />
        ) : null}
      </div>
      <div class="bar__note">
        <span class="bar__state">{STATE_LABEL[state]}</span>
        <span class="bar__detail">{note(m, state)}</span>
      </div>
    </li>
  );
}

export function UsageBars({
  metrics,
  nearPct,
  only,
}: {
  metrics: MetricBarFragment[];
  nearPct: number;
  only?: string[] | undefined;
}) {
  const shown = only?.length
    ? only.flatMap((code) => metrics.filter((m) => m.metric.code === code))
    : metrics;
  return (
    <ul class="bars">
      {shown.map((m) => (
        <UsageBar key={m.metric.code} m={m} nearPct={nearPct} />
      ))}
    </ul>
  );
}
