// The token and the route, both in the address's fragment (which never reaches a server).
//
// `/dashboard#token=...` hands the dashboard a token as the playground's link does; it is moved at
// once to sessionStorage (this tab only, gone when the tab closes) and out of the address bar, so
// it is neither bookmarked nor shared by copying the address. Routes are `#/` (the viewer's home),
// `#/platform` and `#/org/<id>`.

const KEY = 'tollgate.token';

export function takeToken(): string | null {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromLink = fragment.get('token');
  if (fromLink) {
    try {
      sessionStorage.setItem(KEY, fromLink);
    } catch {
      // Storage may be off (private modes): the token then lives as long as the page.
    }
    history.replaceState(null, '', location.pathname + location.search + '#/');
    return fromLink;
  }
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function saveToken(token: string): void {
  try {
    sessionStorage.setItem(KEY, token);
  } catch {
    // See takeToken.
  }
}

export function forgetToken(): void {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // See takeToken.
  }
}

export type Route = { view: 'home' } | { view: 'platform' } | { view: 'org'; id: string };

export function currentRoute(): Route {
  const h = location.hash.replace(/^#\/?/, '');
  if (h === 'platform') return { view: 'platform' };
  const org = /^org\/([^/?#]+)$/.exec(h);
  if (org) return { view: 'org', id: decodeURIComponent(org[1]) };
  return { view: 'home' };
}

export function orgHref(id: string): string {
  return `#/org/${encodeURIComponent(id)}`;
}
