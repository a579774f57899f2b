// /dashboard: who the token is decides the home view (the platform team's, or its organization's).
import { render } from 'preact';
import { useEffect, useMemo, useState } from 'preact/hooks';
import { ViewerDocument, type ViewerQuery, type ViewerQueryVariables } from '../generated/graphql';
import { live, query, type Status } from '../api';
import { titleCase } from '../format';
import { LiveBadge, Notice } from './parts';
import { OrgView } from './org';
import { PlatformView } from './platform';
import { currentRoute, forgetToken, saveToken, takeToken, type Route } from './session';
import './styles.css';

const ENDPOINT = '/graphql';

function TokenForm({ onToken, problem }: { onToken: (t: string) => void; problem?: string | undefined }) {
  const [value, setValue] = useState('');
  return (
    <form
      class="card token-form"
      onSubmit={(e) => {
        e.preventDefault();
        if (value.trim()) onToken(value.trim().replace(/^Bearer\s+/i, ''));
      }}
    >
      <h1>Tollgate dashboard</h1>
      {problem ? <Notice tone="error">{problem}</Notice> : null}
      <p>
        Open the link <code>serve --demo</code> prints (<code>/dashboard#token=…</code>), or paste a token minted
        with <code>tollgate token</code>.
      </p>
      <label for="token">Token</label>
      <input id="token" type="password" autoComplete="off" value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)} />
      <button type="submit">Open</button>
    </form>
  );
}

function App() {
  const [token, setToken] = useState<string | null>(() => takeToken());
  const [route, setRoute] = useState<Route>(() => currentRoute());
  const [viewer, setViewer] = useState<ViewerQuery['viewer'] | null>(null);
  const [problem, setProblem] = useState<string | undefined>();
  const [status, setStatus] = useState<Status>('connecting');
  const [epoch, setEpoch] = useState(0);

  useEffect(() => {
    const onHash = () => {
      // A link with a new token (pasted into the address bar) replaces the current one.
      if (location.hash.includes('token=')) setToken(takeToken());
      setRoute(currentRoute());
    };
    addEventListener('hashchange', onHash);
    return () => removeEventListener('hashchange', onHash);
  }, []);

  useEffect(() => {
    if (!token) return;
    setViewer(null);
    query<ViewerQuery, ViewerQueryVariables>(ENDPOINT, token, ViewerDocument, {}).then((r) => {
      if (r.data?.viewer) {
        setViewer(r.data.viewer);
        setProblem(undefined);
      } else {
        forgetToken();
        setToken(null);
        setProblem(r.errors[0]?.message ?? 'the token was refused');
      }
    });
  }, [token]);

  const client = useMemo(
    () =>
      token
        ? live(ENDPOINT, token, (s, reconnected) => {
            setStatus(s);
            if (reconnected) setEpoch((e) => e + 1);
          })
        : null,
    [token],
  );
  useEffect(() => () => void client?.dispose(), [client]);

  if (!token || !client) {
    return (
      <TokenForm
        problem={problem}
        onToken={(t) => {
          saveToken(t);
          setToken(t);
        }}
      />
    );
  }
  if (!viewer) return <p class="loading">Loading…</p>;

  const platform = viewer.isPlatformTeam;
  let body;
  if (route.view === 'platform' || (route.view === 'home' && platform)) {
    body = platform ? (
      <PlatformView endpoint={ENDPOINT} token={token} client={client} epoch={epoch} />
    ) : (
      <Notice tone="error">The platform view is only for the platform team; your token belongs to an organization.</Notice>
    );
  } else {
    const id = route.view === 'org' ? route.id : null;
    body = <OrgView key={id ?? 'own'} endpoint={ENDPOINT} token={token} client={client} id={id} epoch={epoch} />;
  }

  return (
    <>
      <header class="top">
        <nav aria-label="Views">
          <a class="brand" href="#/">
            Tollgate
          </a>
          {platform ? <a href="#/platform">Platform</a> : null}
          {!platform && viewer.organization ? <a href="#/">{viewer.organization.name}</a> : null}
        </nav>
        <div class="who">
          <span class="muted">
            {viewer.userId}
            {viewer.role ? ` · ${titleCase(viewer.role)}` : ''}
            {platform ? ' · platform team' : ''}
          </span>
          <LiveBadge status={status} />
          <button
            type="button"
            class="link"
            onClick={() => {
              forgetToken();
              setToken(null);
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      <main>{body}</main>
    </>
  );
}

const root = document.getElementById('app');
if (root) {
  root.textContent = '';
  render(<App />, root);
}
