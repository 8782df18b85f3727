/**
 * A stand-in for Tally on 127.0.0.1 (node:http, a random port) that answers each request with
 * what `respond(attempt, request)` says, and records every request: method, path, headers, body.
 */
import http from 'node:http';

export async function fakeServer(respond) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      text += chunk;
    });
    req.on('end', async () => {
      const request = {
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: text ? JSON.parse(text) : undefined,
        at: performance.now(),
      };
      requests.push(request);
      const answer = await respond(requests.length, request);
      if (answer === 'hang') return; // never answers: the client's timeout must end it
      if (answer === 'drop') {
        req.socket.destroy(); // the connection breaks: a network error
        return;
      }
      const { status = 200, headers = {}, body = {} } = answer;
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      res.end(typeof body === 'string' ? body : JSON.stringify(body));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
