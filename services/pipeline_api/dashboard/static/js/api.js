// The one way the dashboard talks to the service: the public /v1 HTTP API with the
// bearer token. Every failure becomes an ApiError carrying the API's own message.

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: described by its status below
  }
  const error = body && body.error;
  if (error && typeof error.message === 'string') {
    return new ApiError(response.status, error.code, error.message, error.details || {});
  }
  const text = `The service answered ${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, `http_${response.status}`, `${text}.`);
}

function filenameOf(response, fallback) {
  const disposition = response.headers.get('Content-Disposition') || '';
  const match = /filename="([^"]+)"/.exec(disposition);
  return match ? match[1] : fallback;
}

export class Api {
  /**
   * @param {string} token the bearer token
   * @param {{onUnauthorized?: (message: string) => void}} options called on any 401
   */
  constructor(token, { onUnauthorized } = {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, { params, body, ifMatch, accept, signal } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
    }
    const headers = { Authorization: `Bearer ${this.token}`, Accept: accept || 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (ifMatch !== undefined && ifMatch !== null) headers['If-Match'] = `"${ifMatch}"`;
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
      });
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      throw new ApiError(0, 'unreachable',
        'The Dealtrail service cannot be reached. Check that it is running, then try again.');
    }
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(error.message);
      throw error;
    }
    if (response.status === 204) return null;
    if (accept === 'text/csv') {
      return { text: await response.text(), filename: filenameOf(response, 'report.csv') };
    }
    return response.json();
  }

  get(path, params, options = {}) {
    return this.request('GET', path, { ...options, params });
  }

  post(path, body, options = {}) {
    return this.request('POST', path, { ...options, body });
  }

  patch(path, body, options = {}) {
    return this.request('PATCH', path, { ...options, body });
  }

  delete(path, options = {}) {
    return this.request('DELETE', path, options);
  }

  /**
   * Pages of a paginated list (`data`, or `items`, and `next_cursor`) until `limit` items;
   * `next_cursor` goes on from the last page read (null when there is no more).
   */
  async all(path, params, { limit = 5000, signal } = {}) {
    const items = [];
    let cursor = null;
    let position = null;
    do {
      const page = await this.get(path, { ...params, cursor }, { signal });
      items.push(...(page.data || page.items || []));
      position = page.position ?? position;
      cursor = page.next_cursor;
    } while (cursor && items.length < limit);
    return {
      data: items.slice(0, limit), position, truncated: Boolean(cursor) || items.length > limit,
      next_cursor: items.length > limit ? null : cursor,
    };
  }
}
