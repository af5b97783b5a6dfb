// CSV downloads: the report asked for with `Accept: text/csv` and the bearer token, then
// handed to the browser as a file (a plain link could not carry the token).

export async function downloadCsv(api, path, params, signal) {
  const { text, filename } = await api.request('GET', path, { params, accept: 'text/csv', signal });
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return filename;
}
