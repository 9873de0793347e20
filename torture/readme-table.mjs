// Writes the results of the last full torture run (torture/results/latest.json) into docs/torture.md,
// between the markers `<!-- torture:begin -->` and `<!-- torture:end -->`:
//   node torture/readme-table.mjs [results.json]
import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = dirname(fileURLToPath(import.meta.url))
const README = join(HERE, '..', 'docs', 'torture.md')
const source = process.argv[2] ?? join(HERE, 'results', 'latest.json')
const { meta, results } = JSON.parse(readFileSync(source, 'utf8'))
if (meta.smoke) throw new Error(`${source} is a smoke run; docs/torture.md shows a full run`)

const cell = (text) => String(text).replaceAll('|', '\\|').replaceAll('\n', ' ')
const stress = results.filter((r) => r.id.startsWith('stress/'))
const others = results.filter((r) => !r.id.startsWith('stress/'))

const lines = [
  `Last full run: ${meta.date.slice(0, 10)}, Node ${meta.node}, ${meta.passed}/${meta.total} rows kept their promise in ${Math.round(meta.elapsedMs / 1000)} s.`,
  '',
  `**No fault, heavy contention** (${stress[0]?.promise ?? ''})`,
  '',
  '| backend / primitive | seconds | grants | overlaps | fencing violations | lost updates | kept |',
  '| --- | --: | --: | --: | --: | --: | --- |',
  ...stress.map((r) => {
    const m = r.metrics ?? {}
    const name = r.id.replace('stress/', '')
    return `| ${cell(name)} | ${r.seconds} | ${m.grants ?? 0} | ${m.overlaps ?? 0} | ${m.fencingViolations ?? 0} | ${m.lostUpdates ?? 0} | ${r.ok ? 'yes' : '**no**'} |`
  }),
  '',
  '**Faults, budgets and cleanup**',
  '',
  '| fault | backend | promise | measured outcome | kept |',
  '| --- | --- | --- | --- | --- |',
  ...others.map(
    (r) =>
      `| ${cell(r.fault)} | ${cell(r.backend)} | ${cell(r.promise)} | ${cell(r.outcome)} | ${r.ok ? 'yes' : '**no**'} |`,
  ),
]

const readme = readFileSync(README, 'utf8')
const begin = '<!-- torture:begin -->'
const end = '<!-- torture:end -->'
const a = readme.indexOf(begin)
const b = readme.indexOf(end)
if (a < 0 || b < a) throw new Error(`docs/torture.md has no ${begin} … ${end} block`)
writeFileSync(README, `${readme.slice(0, a + begin.length)}\n${lines.join('\n')}\n${readme.slice(b)}`)
console.log(`docs/torture.md: torture table from ${source} (${results.length} rows)`)
