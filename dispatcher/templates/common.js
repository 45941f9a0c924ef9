{#- The status pages' shared script: escaping, status words, durations, the live note. #}
{% raw %}const esc = s => String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const words = {passed:'✓ passed', failed:'✗ failed', timed_out:'⏱ timed out', error:'⚠ error', superseded:'↷ superseded', cancelled:'⊘ cancelled'};
const statusText = s => s ? words[s] || s : '● running';
const dur = ms => ms == null ? '–' : ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms/1000).toFixed(1) + ' s' : Math.floor(ms/60000) + 'm ' + String(Math.floor(ms/1000)%60).padStart(2,'0') + 's';
function live(source, what) {
  const note = document.getElementById('live');
  source.onopen = () => { note.textContent = 'live'; };
  source.onerror = () => { note.textContent = 'reconnecting…'; };
}
{% endraw %}