-- End-to-end tests: the plugin in this Neovim driving the real `sandlink lsp` binary on the local driver.

local harness = require('harness')
local test, wait_for = harness.test, harness.wait_for
local assert_equal, assert_matches, assert_true = harness.assert_equal, harness.assert_matches, harness.assert_true

local workspace_dir = vim.env.SANDLINK_TEST_WORKSPACE
local server_binary = vim.env.SANDLINK_BIN

local status_events = 0
vim.api.nvim_create_autocmd('User', {
  pattern = 'SandlinkStatus',
  callback = function()
    status_events = status_events + 1
  end,
})

local function current_workspace()
  return require('sandlink.state').current_workspace()
end

local function buffer_text(buffer)
  return table.concat(vim.api.nvim_buf_get_lines(buffer, 0, -1, false), '\n')
end

local function last_line(buffer)
  local lines = vim.api.nvim_buf_get_lines(buffer, 0, -1, false)
  return lines[#lines]
end

-- Runs a :Sandlink run command line and returns the run record once the server has answered with a runId.
local function start_run(command_line)
  local runs_before = vim.tbl_count(require('sandlink.state').runs)
  local output = require('sandlink.output')
  local previous_view = output.last_view
  vim.cmd('Sandlink run ' .. command_line)
  -- The output buffer appears at once when connected, or after the connect that a run while disconnected makes.
  wait_for('the output buffer of `' .. command_line .. '`', 30000, function()
    return output.last_view ~= previous_view
  end)
  local view = output.last_view
  wait_for('the runId of `' .. command_line .. '`', 10000, function()
    return vim.b[view.buffer].sandlink_run_id ~= nil or last_line(view.buffer):find('^%[not started')
  end)
  assert_true(vim.b[view.buffer].sandlink_run_id ~= nil, 'the run started: ' .. buffer_text(view.buffer))
  assert_true(vim.tbl_count(require('sandlink.state').runs) > runs_before, 'a run is recorded')
  return require('sandlink.state').runs[vim.b[view.buffer].sandlink_run_id]
end

local function wait_for_exit(run, timeout_ms)
  wait_for('the exit of `' .. run.command .. '`', timeout_ms or 15000, function()
    return run.finished
  end)
end

test('statusline_should_be_empty_before_setup', function()
  assert_equal('', require('sandlink').statusline(), 'statusline before setup')
end)

test('setup_should_start_the_server_and_show_disconnected', function()
  vim.cmd('edit ' .. vim.fn.fnameescape(workspace_dir .. '/hello.txt'))
  local events_before = status_events
  local workspace = require('sandlink').setup({
    server_path = server_binary,
    driver = 'local',
    output = { open = 'split' },
  })
  assert_equal(workspace_dir, workspace.root_dir, 'root_dir found from .sandlink.toml')
  wait_for('the server to initialize', 15000, function()
    return current_workspace().ready
  end)
  assert_equal('sandlink: disconnected', require('sandlink').statusline(), 'statusline before connecting')
  assert_true(status_events > events_before, 'User SandlinkStatus fired')
  local client = vim.lsp.get_client_by_id(workspace.client_id)
  assert_true(client ~= nil, 'the client exists')
  assert_true(vim.lsp.buf_is_attached(0, workspace.client_id), 'hello.txt is attached to the client')
  assert_true(vim.fn.exists(':Sandlink') == 2, ':Sandlink exists')
end)

test('initialize_should_advertise_the_sandlink_capability_and_list_the_local_driver', function()
  local workspace = current_workspace()
  local client = vim.lsp.get_client_by_id(workspace.client_id)
  local experimental = client.server_capabilities and client.server_capabilities.experimental
  assert_true(type(experimental) == 'table' and type(experimental.sandlink) == 'table',
    'server capabilities.experimental.sandlink')
  wait_for('the driver list', 10000, function()
    return workspace.drivers ~= nil
  end)
  local has_local = false
  for _, driver in ipairs(workspace.drivers) do
    has_local = has_local or (driver.id == 'local' and driver.available)
  end
  assert_true(has_local, 'the local driver is available: ' .. vim.inspect(workspace.drivers))
  local candidates = require('sandlink.commands').complete('driver=l', 'Sandlink connect driver=l', 25)
  assert_equal({ 'driver=local' }, candidates, 'connect completion')
end)

test('connect_should_start_a_local_session_and_update_the_statusline', function()
  local events_before = status_events
  -- A driver's name where a profile is expected connects that driver (the workspace has no profile named local).
  vim.cmd('Sandlink connect local')
  wait_for('a session', 30000, function()
    return current_workspace().session ~= nil
  end)
  local session = current_workspace().session
  assert_true(type(session.sessionId) == 'string' and session.sessionId ~= '', 'sessionId')
  assert_equal('local', session.driver, 'driver')
  assert_matches('^sandlink: local active', require('sandlink').statusline(), 'statusline after connecting')
  assert_true(status_events > events_before, 'User SandlinkStatus fired on connect')
end)

test('run_should_stream_stdout_and_stderr_into_the_output_buffer_and_end_with_the_exit_line', function()
  local run = start_run([[printf 'first line\n'; printf 'to stderr\n' >&2; sleep 0.2; printf 'last line\n']])
  wait_for_exit(run)
  local lines = vim.api.nvim_buf_get_lines(run.view.buffer, 0, -1, false)
  assert_true(vim.tbl_contains(lines, 'first line'), 'stdout line in the buffer: ' .. vim.inspect(lines))
  assert_true(vim.tbl_contains(lines, 'to stderr'), 'stderr line in the buffer: ' .. vim.inspect(lines))
  assert_true(vim.tbl_contains(lines, 'last line'), 'stdout after the pause in the buffer: ' .. vim.inspect(lines))
  assert_matches('^%[exit 0', lines[#lines], 'exit line')
  local output = require('sandlink.output')
  local stderr_row
  for row, line in ipairs(lines) do
    if line == 'to stderr' then
      stderr_row = row - 1
    end
  end
  local stderr_highlighted = false
  for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(run.view.buffer, output.namespace, 0, -1, { details = true })) do
    if mark[2] == stderr_row and mark[4].hl_group == 'SandlinkStderr' then
      stderr_highlighted = true
    end
  end
  assert_true(stderr_highlighted, 'the stderr line is highlighted as SandlinkStderr')
  assert_true(#vim.fn.win_findbuf(run.view.buffer) > 0, 'the output buffer is shown in a window')
end)

test('run_output_should_appear_while_the_process_is_still_running', function()
  local run = start_run([[echo tick-1; sleep 1; echo tick-2; sleep 1; echo tick-3]])
  -- The run is waited for even when an assertion fails, so that later tests do not see it still running.
  local ok, err = pcall(function()
    wait_for('tick-1 before the run ends', 10000, function()
      return vim.tbl_contains(vim.api.nvim_buf_get_lines(run.view.buffer, 0, -1, false), 'tick-1')
    end)
    assert_true(not run.finished, 'the run is still going when its first line is shown')
    assert_true(not vim.tbl_contains(vim.api.nvim_buf_get_lines(run.view.buffer, 0, -1, false), 'tick-3'),
      'later output has not arrived yet: ' .. buffer_text(run.view.buffer))
  end)
  wait_for_exit(run)
  assert_true(ok, tostring(err))
  assert_true(vim.tbl_contains(vim.api.nvim_buf_get_lines(run.view.buffer, 0, -1, false), 'tick-3'),
    'all output: ' .. buffer_text(run.view.buffer))
  assert_matches('^%[exit 0', last_line(run.view.buffer), 'exit line')
end)

test('run_should_see_the_workspace_files_and_report_a_failing_exit_code', function()
  local run = start_run('cat hello.txt; exit 3')
  wait_for_exit(run)
  assert_matches('hello from the workspace', buffer_text(run.view.buffer), 'the uploaded file')
  assert_matches('^%[exit 3', last_line(run.view.buffer), 'exit line')
end)

test('a_failing_run_should_put_its_workspace_locations_into_the_quickfix_list', function()
  -- Printed from the sandbox's root: the server shows that path as the workspace's, which is what makes it a location.
  vim.fn.setqflist({}, ' ', { title = 'before', items = {} })
  local captured, stop = harness.capture_notifications()
  local trace = [[Error: expected 3, got 2\n    at Object.<anonymous> (%s/lib.js:9:8)\n/elsewhere/x.js:1:1\n]]
  local run = start_run("printf '" .. trace .. "' \"$PWD\"; exit 1")
  wait_for_exit(run)
  wait_for('the quickfix list of the failed run', 5000, function()
    return vim.fn.getqflist({ title = 0 }).title ~= 'before'
  end)
  stop()
  local list = vim.fn.getqflist({ title = 0, items = 0 })
  assert_matches('^sandlink: ', list.title, 'the title names the run')
  assert_equal(1, #list.items, 'one location inside the workspace: ' .. vim.inspect(list.items))
  local item = list.items[1]
  assert_equal(vim.fn.resolve(workspace_dir .. '/lib.js'), vim.fn.resolve(vim.api.nvim_buf_get_name(item.bufnr)), 'the workspace file')
  assert_equal({ 9, 8, 'Error: expected 3, got 2' }, { item.lnum, item.col, item.text }, 'line, column and the error')
  assert_true(harness.find_notification(captured, ':copen lists 1 location') ~= nil, vim.inspect(captured))

  -- On demand, from the output buffer shown: the same run's locations again.
  vim.fn.setqflist({}, ' ', { title = 'cleared', items = {} })
  vim.api.nvim_set_current_buf(run.view.buffer)
  assert_equal(1, require('sandlink.commands').quickfix(), ':Sandlink quickfix counts the locations')
  vim.cmd('Sandlink quickfix')
  assert_equal(1, #vim.fn.getqflist(), 'the list holds the location again')
  vim.cmd('buffer #')
end)

test('saving_a_buffer_should_sync_it_before_the_next_run', function()
  vim.cmd('edit ' .. vim.fn.fnameescape(workspace_dir .. '/hello.txt'))
  vim.api.nvim_buf_set_lines(0, 0, -1, false, { 'changed in the editor' })
  vim.cmd('silent write')
  local run = start_run('cat hello.txt')
  wait_for_exit(run)
  assert_matches('changed in the editor', buffer_text(run.view.buffer), 'the saved content in the sandbox')
end)

-- What the server's side holds: a file in the session's sandbox (the local driver's remote root is a host path).
local function sandbox_file(name)
  return current_workspace().session.remoteRoot .. '/' .. name
end

-- While body runs, records the params of every request whose method is in `methods` and answers each vim.ui.select
-- with answer(items, options) (the prompts are recorded too). Returns the records and the notifications.
local function recording_requests_and_prompts(methods, answer, body)
  local client = require('sandlink.client')
  local original_request, original_select = client.request, vim.ui.select
  local record = { requests = {}, prompts = {} }
  for _, method in ipairs(methods) do
    record.requests[method] = {}
  end
  client.request = function(workspace, method, params, on_result)
    if record.requests[method] then
      table.insert(record.requests[method], vim.deepcopy(params))
    end
    return original_request(workspace, method, params, on_result)
  end
  vim.ui.select = function(items, options, on_choice)
    local shown = {}
    for _, item in ipairs(items) do
      table.insert(shown, options.format_item and options.format_item(item) or item)
    end
    table.insert(record.prompts, { kind = options.kind, prompt = options.prompt, shown = shown })
    on_choice(answer(items, options))
  end
  local captured, stop = harness.capture_notifications()
  local ok, err = pcall(body)
  stop()
  client.request, vim.ui.select = original_request, original_select
  assert_true(ok, tostring(err))
  return record, captured
end

-- Runs `:Sandlink run <line>` with vim.ui.select answering `answer` (after `before_answer`, if given), and records
-- every sandlink/run request's params and every prompt. Returns the view, the records, and the notifications.
local function run_answering_trust(line, answer, before_answer)
  local client = require('sandlink.client')
  local output = require('sandlink.output')
  local original_request, original_select = client.request, vim.ui.select
  local record = { run_params = {}, prompts = {} }
  client.request = function(workspace, method, params, on_result)
    if method == 'sandlink/run' then
      table.insert(record.run_params, vim.deepcopy(params))
    end
    return original_request(workspace, method, params, on_result)
  end
  vim.ui.select = function(items, options, on_choice)
    table.insert(record.prompts, { items = items, prompt = options.prompt })
    if before_answer then
      before_answer()
    end
    on_choice(answer)
  end
  local captured, stop = harness.capture_notifications()
  local previous_view = output.last_view
  local ok, err = pcall(function()
    vim.cmd('Sandlink run ' .. line)
    wait_for('the output buffer of `' .. line .. '`', 10000, function()
      return output.last_view ~= previous_view
    end)
    local view = output.last_view
    wait_for('a run id or a not-started note', 15000, function()
      return vim.b[view.buffer].sandlink_run_id ~= nil or last_line(view.buffer):find('^%[not started')
    end)
  end)
  stop()
  client.request, vim.ui.select = original_request, original_select
  assert_true(ok, tostring(err))
  return output.last_view, record, captured
end

test('tasks_should_be_listed_by_the_server_and_follow_a_written_sandlink_toml', function()
  local workspace = current_workspace()
  wait_for('the tasks from the server', 10000, function()
    return require('sandlink.commands').read_tasks(workspace).greet ~= nil
  end)
  assert_matches('echo hello from a task', require('sandlink.commands').read_tasks(workspace).greet, 'the command')
  local tasks_path = workspace_dir .. '/.sandlink.toml'
  local original = vim.fn.readfile(tasks_path)
  vim.cmd('edit ' .. vim.fn.fnameescape(tasks_path))
  vim.api.nvim_buf_set_lines(0, -1, -1, false, { 'added = "echo added"' })
  vim.cmd('silent write')
  wait_for('the added task', 10000, function()
    return require('sandlink.commands').read_tasks(workspace).added ~= nil
  end)
  vim.api.nvim_buf_set_lines(0, 0, -1, false, original)
  vim.cmd('silent write')
  vim.cmd('bwipeout!')
  wait_for('the added task gone again', 10000, function()
    return require('sandlink.commands').read_tasks(workspace).added == nil
  end)
  assert_true(vim.tbl_contains(vim.tbl_keys(require('sandlink.commands').read_tasks(workspace)), 'greet'), 'greet stays')
end)

local original_tasks_file
test('a_task_file_changed_while_the_trust_prompt_was_open_should_not_be_trusted', function()
  local tasks_path = workspace_dir .. '/.sandlink.toml'
  original_tasks_file = vim.fn.readfile(tasks_path)
  local view, record, captured = run_answering_trust('greet', 'Trust workspace', function()
    -- The repository swaps the task while the user reads the prompt.
    vim.fn.writefile({ '[tasks]', 'greet = "echo swapped > swapped.txt"' }, tasks_path)
  end)
  vim.fn.writefile(original_tasks_file, tasks_path)
  assert_equal(1, #record.prompts, 'one prompt')
  assert_matches('echo ran > task%-ran%.txt', record.prompts[1].prompt, 'the prompt shows what was read then')
  assert_equal(1, #record.run_params, 'not retried after a refused trust: ' .. vim.inspect(record.run_params))
  assert_true(harness.find_notification(captured, 'changed since it was shown') ~= nil,
    'the refusal is shown: ' .. vim.inspect(captured))
  assert_matches('^%[not started', last_line(view.buffer), 'the run did not start')
  assert_true(vim.fn.filereadable(sandbox_file('swapped.txt')) == 0, 'the swapped task did not run')
  assert_true(vim.fn.filereadable(sandbox_file('task-ran.txt')) == 0, 'the shown task did not run either')
end)

test('a_task_in_an_untrusted_workspace_should_go_by_name_and_run_nothing_when_declined', function()
  local view, record, captured = run_answering_trust('greet', 'Do not trust it')
  assert_equal(1, #record.run_params, 'one run request')
  assert_equal('greet', record.run_params[1].task, 'the task goes by name')
  assert_true(record.run_params[1].command == nil, 'never its text: ' .. vim.inspect(record.run_params[1]))
  assert_equal(1, #record.prompts, 'the user is asked once')
  assert_equal({ 'Trust workspace', 'Do not trust it' }, record.prompts[1].items, 'the choices')
  -- The server's message, naming the task and what it would run.
  assert_matches('Task "greet" comes from', record.prompts[1].prompt, 'the prompt')
  assert_matches('echo hello from a task; echo ran > task%-ran%.txt', record.prompts[1].prompt, 'the prompt')
  assert_matches('^%[not started: the workspace is not trusted', last_line(view.buffer), 'the output buffer says why')
  assert_true(harness.find_notification(captured, '^sandlink: trusted ') == nil, 'nothing was trusted: ' .. vim.inspect(captured))
  vim.wait(500)
  assert_true(vim.fn.filereadable(sandbox_file('task-ran.txt')) == 0, 'the task did not run in the sandbox')
end)

test('accepting_the_trust_prompt_should_trust_the_workspace_and_run_the_task_once', function()
  local view, record = run_answering_trust('greet', 'Trust workspace')
  assert_equal(1, #record.prompts, 'asked once')
  assert_equal(2, #record.run_params, 'the refused request and one retry')
  assert_equal('greet', record.run_params[2].task, 'the retry goes by name too')
  local run = require('sandlink.state').runs[vim.b[view.buffer].sandlink_run_id]
  assert_true(run ~= nil, 'the task started after trusting: ' .. buffer_text(view.buffer))
  wait_for_exit(run)
  assert_matches('hello from a task', buffer_text(view.buffer), 'task output')
  assert_true(vim.fn.filereadable(sandbox_file('task-ran.txt')) == 1, 'the task ran in the sandbox')
  assert_true(vim.fn.filereadable(vim.env.SANDLINK_STATE_DIR .. '/trust.json') == 1, 'the trust is remembered')
  -- Trusted now: the task runs at once, without a prompt.
  local again_view, again = run_answering_trust('greet', 'Do not trust it')
  assert_equal(0, #again.prompts, 'not asked again')
  wait_for_exit(require('sandlink.state').runs[vim.b[again_view.buffer].sandlink_run_id])
end)

test('a_typed_command_line_should_run_as_typed_without_asking_for_trust', function()
  local view, record = run_answering_trust('echo typed by the user', 'Do not trust it')
  assert_equal(0, #record.prompts, 'no prompt for what the user typed')
  assert_equal('echo typed by the user', record.run_params[1].command, 'sent as a command line')
  assert_true(record.run_params[1].task == nil, 'not as a task')
  wait_for_exit(require('sandlink.state').runs[vim.b[view.buffer].sandlink_run_id])
end)

test('cancel_should_stop_a_running_command_and_mark_it_cancelled', function()
  local run = start_run('sleep 60')
  assert_matches('1 running', require('sandlink').statusline(), 'statusline while running')
  local started = (vim.uv or vim.loop).hrtime()
  vim.cmd('Sandlink cancel')
  wait_for_exit(run, 10000)
  assert_true(((vim.uv or vim.loop).hrtime() - started) / 1e9 < 10, 'cancelled well before the command would end')
  assert_true(run.exit.cancelled == true, 'exit says cancelled: ' .. vim.inspect(run.exit))
  assert_matches('^%[exit: cancelled', last_line(run.view.buffer), 'exit line')
  assert_matches('^sandlink: local active$', require('sandlink').statusline(), 'statusline after the run ended')
end)

test('terminal_should_open_a_shell_in_the_sandbox_that_runs_what_is_typed_and_follows_the_window', function()
  vim.cmd('Sandlink terminal')
  local term = require('sandlink.terminal').last
  assert_true(term ~= nil and vim.api.nvim_get_current_buf() == term.buffer, 'the terminal buffer is shown')
  wait_for('the terminal run to start', 15000, function()
    return term.run_id ~= nil
  end)
  -- What the buffer's on_input hands on for typed keys (a headless Neovim running a script takes no typed keys).
  require('sandlink.terminal').send(term, 'tty; stty size; echo hi-$((40 + 2))\r')
  wait_for('the shell to run the line', 15000, function()
    return buffer_text(term.buffer):find('hi%-42') ~= nil
  end)
  local text = buffer_text(term.buffer)
  assert_matches('/dev/pts/', text, 'tty names a terminal')
  local window = vim.fn.win_findbuf(term.buffer)[1]
  local expected_size = vim.api.nvim_win_get_height(window) .. ' ' .. vim.api.nvim_win_get_width(window)
  assert_true(text:find(expected_size, 1, true) ~= nil, 'stty shows the window size ' .. expected_size .. ': ' .. text)
  vim.api.nvim_win_set_height(window, 7)
  wait_for('the new size to reach the run', 5000, function()
    return term.size.rows == 7
  end)
  require('sandlink.terminal').send(term, 'stty size; echo sized-$((1 + 1))\r')
  wait_for('stty to answer', 15000, function()
    return buffer_text(term.buffer):find('sized%-2') ~= nil
  end)
  assert_true(buffer_text(term.buffer):find('7 ' .. vim.api.nvim_win_get_width(window), 1, true) ~= nil,
    'stty shows the new height: ' .. buffer_text(term.buffer))
  require('sandlink.terminal').send(term, 'exit 3\r')
  local run = require('sandlink.state').runs[term.run_id]
  wait_for('the shell to exit', 15000, function()
    return run.finished
  end)
  assert_equal(3, run.exit.exitCode, 'the exit code')
  wait_for('the exit note', 5000, function()
    return buffer_text(term.buffer):find('exited with code 3', 1, true) ~= nil
  end)
  vim.cmd('bwipeout! ' .. term.buffer)
end)

test('sync_should_report_what_it_did', function()
  local captured, stop = harness.capture_notifications()
  vim.cmd('Sandlink sync')
  local ok, err = pcall(wait_for, 'the sync summary', 15000, function()
    return harness.find_notification(captured, 'synced') or harness.find_notification(captured, 'sync failed')
  end)
  stop()
  assert_true(ok, tostring(err))
  assert_true(harness.find_notification(captured, 'synced:') ~= nil, 'sync succeeded: ' .. vim.inspect(captured))
end)

test('a_held_back_env_should_be_shown_and_uploaded_only_when_allowed', function()
  local env_path = workspace_dir .. '/.env'
  vim.fn.writefile({ 'SANDLINK_NVIM_SECRET=not-for-the-sandbox' }, env_path)
  local captured, stop = harness.capture_notifications()
  vim.cmd('Sandlink sync')
  local ok, err = pcall(wait_for, 'the sync summary', 15000, function()
    return harness.find_notification(captured, 'synced')
  end)
  stop()
  assert_true(ok, tostring(err))
  assert_true(vim.fn.filereadable(sandbox_file('.env')) == 0, 'the .env stayed on this machine')
  -- :Sandlink status names it and the way to upload it.
  captured, stop = harness.capture_notifications()
  vim.cmd('Sandlink status')
  ok, err = pcall(wait_for, 'the status', 10000, function()
    return harness.find_notification(captured, 'held back')
  end)
  stop()
  assert_true(ok, tostring(err) .. ' ' .. vim.inspect(captured))
  assert_matches('%.env %(secret%-file%-name%)', harness.find_notification(captured, 'held back').message, 'the status')
  assert_true(vim.tbl_contains(require('sandlink.commands').complete('', 'Sandlink allow ', 15), '.env'),
    ':Sandlink allow completes it')
  vim.cmd('silent checkhealth sandlink')
  local health_text = buffer_text(0)
  vim.cmd('bwipeout!')
  assert_matches('likely secrets: %.env', health_text, ':checkhealth names it')
  -- :Sandlink allow asks for how long, then uploads it for this session.
  local done = false
  local record = recording_requests_and_prompts({ 'sandlink/allowSecret' }, function(items, prompt_options)
    return prompt_options.kind == 'sandlink.allow_secret' and items[1] or nil
  end, function()
    require('sandlink.first_use').allow(current_workspace(), '.env', function()
      done = true
    end)
    wait_for('the allow to end', 15000, function()
      return done
    end)
  end)
  assert_equal(1, #record.requests['sandlink/allowSecret'], 'one allow request')
  assert_equal(false, record.requests['sandlink/allowSecret'][1].remember, 'for this session only')
  assert_matches('looks like a secret', record.prompts[1].prompt, 'the question names what it is')
  assert_true(vim.fn.filereadable(sandbox_file('.env')) == 1, 'the allowed .env is in the sandbox')
  vim.fn.delete(env_path)
end)

test('a_driver_that_needs_an_image_should_offer_the_dev_container_image_first', function()
  local devcontainer_dir = workspace_dir .. '/.devcontainer'
  vim.fn.mkdir(devcontainer_dir, 'p')
  vim.fn.writefile({ '// the team image', '{ "image": "node:20-bookworm", }' }, devcontainer_dir .. '/devcontainer.json')
  local done, settings
  local record = recording_requests_and_prompts({ 'sandlink/settingChoices' }, function(items, prompt_options)
    return prompt_options.kind == 'sandlink.setting_choice' and items[1] or nil
  end, function()
    require('sandlink.first_use').ask_connect_settings(current_workspace(), 'docker', function(value)
      done, settings = true, value
    end)
    wait_for('the question to end', 15000, function()
      return done
    end)
  end)
  vim.fn.delete(devcontainer_dir, 'rf')
  assert_equal(1, #record.requests['sandlink/settingChoices'], 'one choices request')
  assert_equal('image', record.requests['sandlink/settingChoices'][1].setting, 'docker asks for its image')
  assert_equal('node:20-bookworm  (from .devcontainer/devcontainer.json)', record.prompts[1].shown[1], 'the dev container image first')
  assert_equal('Type a value...', record.prompts[1].shown[#record.prompts[1].shown], 'typing is offered last')
  assert_equal({ image = 'node:20-bookworm' }, settings, 'the picked image is the setting')
  -- The local driver asks for nothing.
  done = false
  require('sandlink.first_use').ask_connect_settings(current_workspace(), 'local', function(value)
    done, settings = true, value
  end)
  wait_for('the local answer', 15000, function()
    return done
  end)
  assert_equal({}, settings, 'nothing asked for local')
end)

test('a_conflict_should_be_compared_in_a_diff_and_resolved_either_way', function()
  local commands = require('sandlink.commands')
  local function sync_and_wait(direction)
    local done, result = false, nil
    commands.sync(direction, function(err, answer)
      assert_true(err == nil, 'sync ' .. direction .. ': ' .. vim.inspect(err))
      done, result = true, answer
    end)
    wait_for('sync ' .. direction, 15000, function()
      return done
    end)
    return result
  end
  for _, name in ipairs({ 'mine.txt', 'theirs.txt' }) do
    vim.fn.writefile({ 'base' }, workspace_dir .. '/' .. name)
  end
  sync_and_wait('up')
  for _, name in ipairs({ 'mine.txt', 'theirs.txt' }) do
    vim.fn.writefile({ 'sandbox version' }, sandbox_file(name))
    vim.fn.writefile({ 'my version' }, workspace_dir .. '/' .. name)
  end
  local result = sync_and_wait('both')
  assert_equal(2, #(result.conflicts or {}), 'two conflicts: ' .. vim.inspect(result))
  wait_for('the conflicts in the session state', 10000, function()
    return #commands.conflicts(current_workspace()) == 2
  end)

  local compared
  commands.compare('mine.txt', function(err, buffer)
    assert_true(err == nil, vim.inspect(err))
    compared = buffer
  end)
  wait_for('the diff', 10000, function()
    return compared ~= nil
  end)
  assert_equal({ 'sandbox version' }, vim.api.nvim_buf_get_lines(compared, 0, -1, false), "the sandbox's side")
  assert_true(vim.wo.diff, 'the sandbox side is in diff mode')
  vim.cmd('tabclose')

  vim.cmd('Sandlink resolve mine.txt mine')
  wait_for('mine kept in the sandbox', 10000, function()
    return vim.fn.readfile(sandbox_file('mine.txt'))[1] == 'my version'
  end)
  vim.cmd('Sandlink resolve theirs.txt sandbox')
  wait_for("the sandbox's version in the workspace", 10000, function()
    return vim.fn.readfile(workspace_dir .. '/theirs.txt')[1] == 'sandbox version'
  end)
  -- A sync down lists what came in the quickfix list.
  vim.fn.writefile({ 'made in the sandbox' }, sandbox_file('made-there.txt'))
  local down = sync_and_wait('down')
  assert_equal({ 'made-there.txt' }, down.brought, 'the result lists what came')
  local quickfix = vim.fn.getqflist({ title = 1, items = 1 })
  assert_equal('sandlink: files from the sandbox', quickfix.title, 'quickfix title')
  assert_equal(workspace_dir .. '/made-there.txt', vim.fn.bufname(quickfix.items[1].bufnr), 'the file is in the quickfix list')
  assert_equal({ 'my version' }, vim.fn.readfile(workspace_dir .. '/mine.txt'), 'mine stayed mine')
  wait_for('no conflicts left', 10000, function()
    return #commands.conflicts(current_workspace()) == 0
  end)
  local candidates = commands.complete('', 'Sandlink resolve ', 17)
  assert_true(vim.tbl_contains(candidates, 'mine') and vim.tbl_contains(candidates, 'sandbox'), vim.inspect(candidates))
end)

test('status_should_show_the_session', function()
  local captured, stop = harness.capture_notifications()
  vim.cmd('Sandlink status')
  local ok, err = pcall(wait_for, 'the status', 10000, function()
    return harness.find_notification(captured, 'session')
  end)
  stop()
  assert_true(ok, tostring(err))
  assert_matches('is active', harness.find_notification(captured, 'session').message, 'status text')
end)

test('preview_should_hand_over_a_url_for_the_port', function()
  local workspace = current_workspace()
  local uv = vim.uv or vim.loop
  local function free_port()
    local socket = uv.new_tcp()
    socket:bind('127.0.0.1', 0)
    local port = socket:getsockname().port
    socket:close()
    return port
  end
  local function preview(port)
    local done, result_error, result
    require('sandlink').preview(port, function(err, value)
      done, result_error, result = true, err, value
    end)
    wait_for('the preview answer for ' .. port, 15000, function()
      return done
    end)
    return result_error, result
  end
  local original_open = vim.ui.open
  if original_open then
    vim.ui.open = function()
      return {}, nil
    end
  end
  local captured, stop = harness.capture_notifications()
  -- Nothing listens on a fresh port: the server says so rather than handing over a dead URL.
  local silent_error = preview(free_port())
  local port = free_port()
  local server = start_run('exec python3 -m http.server ' .. port .. ' --bind 127.0.0.1')
  local result_error, result = preview(port)
  stop()
  vim.ui.open = original_open
  vim.cmd('Sandlink cancel ' .. server.run_id)
  wait_for_exit(server, 10000)
  local local_driver
  for _, driver in ipairs(workspace.drivers or {}) do
    if driver.id == 'local' then
      local_driver = driver
    end
  end
  if local_driver and local_driver.capabilities and local_driver.capabilities.preview then
    assert_equal('portNotListening', silent_error and silent_error.data and silent_error.data.kind,
      'a port nothing listens on: ' .. vim.inspect(silent_error))
    assert_true(result_error == nil, 'preview succeeded: ' .. vim.inspect(result_error))
    assert_matches(tostring(port), result.url, 'the URL names the port')
  else
    assert_true(result_error ~= nil and result_error.data and result_error.data.kind == 'unsupported',
      'an unsupported error for a driver without previews: ' .. vim.inspect(result_error))
  end
end)

test('extend_should_move_the_expiry_or_say_the_driver_cannot', function()
  local done, result_error, result
  local captured, stop = harness.capture_notifications()
  vim.cmd('Sandlink extend 600')
  require('sandlink').extend(600, function(err, value)
    done, result_error, result = true, err, value
  end)
  local ok, err = pcall(wait_for, 'the extend answer', 10000, function()
    return done
  end)
  stop()
  assert_true(ok, tostring(err))
  local local_driver
  for _, driver in ipairs(current_workspace().drivers or {}) do
    if driver.id == 'local' then
      local_driver = driver
    end
  end
  if local_driver and local_driver.capabilities and local_driver.capabilities.extend then
    assert_true(result_error == nil and type(result.expiresAt) == 'string', 'extended: ' .. vim.inspect(result_error))
  else
    assert_true(result_error ~= nil and result_error.data and result_error.data.kind == 'unsupported',
      'an unsupported error for a driver that does not expire: ' .. vim.inspect(result_error))
    assert_true(harness.find_notification(captured, 'extending failed') ~= nil,
      'the user is told: ' .. vim.inspect(captured))
  end
end)

test('profiles_should_offer_the_saved_profiles_or_say_why_not', function()
  local selected_items
  local original_select = vim.ui.select
  vim.ui.select = function(items, _, on_choice)
    selected_items = items
    on_choice(nil)
  end
  local captured, stop = harness.capture_notifications()
  local done, result_error, profiles
  require('sandlink.commands').profiles(function(err, value)
    done, result_error, profiles = true, err, value
  end)
  local ok, err = pcall(wait_for, 'the profiles answer', 10000, function()
    return done
  end)
  stop()
  vim.ui.select = original_select
  assert_true(ok, tostring(err))
  if result_error then
    -- A server without profile storage must say so with a kind, and the user must be told.
    assert_true(type(result_error.data) == 'table' and type(result_error.data.kind) == 'string',
      'the error has a kind: ' .. vim.inspect(result_error))
    assert_true(harness.find_notification(captured, 'listing profiles failed') ~= nil, vim.inspect(captured))
  elseif #profiles == 0 then
    assert_true(harness.find_notification(captured, 'no profiles yet') ~= nil, vim.inspect(captured))
  else
    assert_equal(profiles, selected_items, 'the profiles offered in vim.ui.select')
  end
end)

test('checkhealth_should_report_the_server_and_the_running_client', function()
  vim.cmd('silent checkhealth sandlink')
  local text = buffer_text(0)
  vim.cmd('bwipeout!')
  assert_matches('sandlink', text, 'health output')
  assert_matches('found ' .. vim.pesc(server_binary), text, 'the binary is found')
  assert_matches('client %d+ serves', text, 'the client is reported')
  assert_true(not text:find('ERROR'), 'no errors in :checkhealth sandlink:\n' .. text)
  assert_matches('sandlink: keychain', text, 'the keychain is checked')
end)

test('checkhealth_should_warn_about_a_driver_whose_key_is_nowhere', function()
  local health = require('sandlink.health')
  local e2b = { id = 'e2b', available = true,
    credentials = { { key = 'apiKey', envVar = 'E2B_API_KEY', required = true, description = 'E2B API key' } } }
  assert_equal({ 'E2B API key (E2B_API_KEY)' }, health.missing_credentials(e2b, {}, {}), 'no key anywhere')
  assert_equal({}, health.missing_credentials(e2b, {}, { E2B_API_KEY = 'x' }), 'the variable is enough')
  local stored = { { name = 'cloud', driver = 'e2b', hasCredentials = true } }
  assert_equal({}, health.missing_credentials(e2b, stored, {}), 'a profile with a stored key is enough')
  local other = { { name = 'dev', driver = 'docker', hasCredentials = true } }
  assert_equal(1, #health.missing_credentials(e2b, other, {}), "another driver's key does not count")
  local advice = table.concat(health.credential_advice(e2b), '\n')
  assert_matches('E2B_API_KEY', advice, 'advice names the variable')
  assert_matches('set%-credential NAME apiKey', advice, 'advice names the CLI command')
  assert_true(not advice:find('sandlink/'), 'no protocol method in the advice')
end)

test('disconnect_should_end_the_session_and_reset_the_statusline', function()
  -- A file in conflict: disconnecting asks before the sandbox's version is discarded, and can take it first.
  vim.fn.writefile({ 'base' }, workspace_dir .. '/at-exit.txt')
  local synced = false
  require('sandlink.commands').sync('up', function() synced = true end)
  wait_for('the upload', 15000, function() return synced end)
  vim.fn.writefile({ 'sandbox at exit' }, sandbox_file('at-exit.txt'))
  vim.fn.writefile({ 'mine at exit' }, workspace_dir .. '/at-exit.txt')
  synced = false
  require('sandlink.commands').sync('both', function() synced = true end)
  wait_for('the conflict', 15000, function()
    return synced and #require('sandlink.commands').conflicts(current_workspace()) == 1
  end)
  local original_select, prompts = vim.ui.select, {}
  vim.ui.select = function(items, options, on_choice)
    table.insert(prompts, options.prompt)
    on_choice(items[1])
  end
  vim.cmd('Sandlink disconnect')
  vim.ui.select = original_select
  wait_for('the session to end', 15000, function()
    return current_workspace().session == nil
  end)
  assert_equal('sandlink: disconnected', require('sandlink').statusline(), 'statusline after disconnecting')
  assert_equal(1, #prompts, 'asked once about the conflict')
  assert_matches('at%-exit%.txt', prompts[1], 'the prompt names the file')
  assert_equal({ 'sandbox at exit' }, vim.fn.readfile(workspace_dir .. '/at-exit.txt'), "the sandbox's version was taken")
end)

test('a_session_connected_through_execute_command_should_be_adopted', function()
  local workspace = current_workspace()
  assert_true(workspace.session == nil, 'disconnected at the start')
  local client = vim.lsp.get_client_by_id(workspace.client_id)
  local answered = false
  -- What a code action does: workspace/executeCommand with the request's params as the single argument.
  local request = vim.fn.has('nvim-0.11') == 1 and function(...) return client:request(...) end or client.request
  request('workspace/executeCommand', {
    command = 'sandlink.connect',
    arguments = { { driver = 'local', workspaceFolder = vim.uri_from_fname(workspace.root_dir) } },
  }, function()
    answered = true
  end)
  wait_for('the session to be adopted', 30000, function()
    return answered and current_workspace().session ~= nil
  end)
  assert_matches('^sandlink: local active', require('sandlink').statusline(), 'statusline follows the adopted session')
  vim.cmd('Sandlink disconnect')
  wait_for('the adopted session to end', 15000, function()
    return current_workspace().session == nil
  end)
end)

test('a_driver_without_its_key_should_offer_to_store_it_in_the_keychain_and_connect_with_it', function()
  -- The keyed test driver needs a setting (the token's hash, asked for at connect) and a key, as a cloud driver does.
  local token = 'e2e-keyed-token-4821'
  local token_hash = 'c5188a0349d802b4078f11b4d6b9564e3d7713af1185d88b69bc93e414462875'
  local workspace = current_workspace()
  assert_true(workspace.session == nil, 'disconnected at the start')
  local original_input, original_secret = vim.ui.input, vim.fn.inputsecret
  local asked_input, asked_secret = {}, {}
  vim.ui.input = function(options, on_confirm)
    table.insert(asked_input, options.prompt)
    on_confirm(token_hash)
  end
  vim.fn.inputsecret = function(prompt)
    table.insert(asked_secret, prompt)
    return token
  end
  local done, connect_error, session
  local record = recording_requests_and_prompts({ 'sandlink/connect', 'sandlink/setCredential' }, function(items, options)
    return options.kind == 'sandlink.store_key' and items[1] or nil
  end, function()
    require('sandlink').connect({ driver = 'keyed' }, function(err, value)
      done, connect_error, session = true, err, value
    end)
    wait_for('the connect to end', 30000, function()
      return done
    end)
  end)
  vim.ui.input, vim.fn.inputsecret = original_input, original_secret
  assert_true(connect_error == nil, 'connected: ' .. vim.inspect(connect_error))
  assert_equal('keyed', session.profile, 'connected with the profile that holds the key')
  assert_matches('expectedTokenHash', asked_input[1] or '', 'the setting was asked for')
  assert_matches('test token', asked_secret[1] or '', 'the key was asked for, hidden')
  assert_equal(2, #record.requests['sandlink/connect'], 'refused without the key, then connected with it')
  assert_equal('keyed', record.requests['sandlink/connect'][2].profile, 'the retry names the profile')
  assert_equal({ { profile = 'keyed', key = 'token', value = token } }, record.requests['sandlink/setCredential'],
    'stored once')
  assert_matches('needs test token', record.prompts[1].prompt, 'the question names what is missing')
  assert_matches('SANDLINK_KEYED_TOKEN', table.concat(record.prompts[1].shown, ' '), 'and the variable to set instead')
  vim.cmd('Sandlink disconnect')
  wait_for('the keyed session to end', 15000, function()
    return current_workspace().session == nil
  end)
end)

local workspace_file = workspace_dir .. '/.sandlink.toml'
local workspace_file_before_profiles
-- A profile that loosens the sandbox (it passes one of the user's variables into runs), so it needs the workspace's
-- trust without needing any cloud.
local loose_profile_lines = { '', '[profiles.loose]', 'driver = "local"', 'passEnv = ["SANDLINK_TEST_PASSED"]' }

-- Connects with the options, answering the trust prompt with `answer`; returns err, session and the records.
local function connect_answering_trust(options, answer)
  local done, connect_error, session
  local record, captured = recording_requests_and_prompts({ 'sandlink/connect', 'sandlink/trustWorkspace' },
    function(items, prompt_options)
      return prompt_options.kind == 'sandlink.trust' and answer or nil
    end,
    function()
      require('sandlink').connect(options, function(err, value)
        done, connect_error, session = true, err, value
      end)
      wait_for('the connect to end', 30000, function()
        return done
      end)
    end)
  return connect_error, session, record, captured
end

test('the_profile_picker_should_mark_a_profile_that_asks_for_trust', function()
  workspace_file_before_profiles = vim.fn.readfile(workspace_file)
  vim.fn.writefile(vim.list_extend(vim.deepcopy(workspace_file_before_profiles), loose_profile_lines), workspace_file)
  local done
  local record = recording_requests_and_prompts({}, function()
    return nil
  end, function()
    require('sandlink.commands').profiles(function()
      done = true
    end)
    wait_for('the profiles answer', 10000, function()
      return done
    end)
  end)
  assert_equal(1, #record.prompts, 'the picker was shown')
  local loose_line
  for _, line in ipairs(record.prompts[1].shown) do
    if line:find('^loose ') then
      loose_line = line
    end
  end
  assert_true(loose_line ~= nil, 'the workspace profile is offered: ' .. vim.inspect(record.prompts[1].shown))
  assert_matches('%[asks for trust%]', loose_line, 'the profile that needs trust is marked')
end)

test('connecting_with_a_profile_that_needs_trust_should_connect_nothing_when_declined', function()
  assert_true(current_workspace().session == nil, 'disconnected at the start')
  local err, session, record, captured = connect_answering_trust({ profile = 'loose' }, 'Do not trust it')
  assert_true(session == nil and current_workspace().session == nil, 'no session')
  assert_equal('workspaceNotTrusted', type(err) == 'table' and type(err.data) == 'table' and err.data.kind or err,
    'the refusal is passed on')
  assert_equal(1, #record.requests['sandlink/connect'], 'one connect request, no retry')
  assert_equal(0, #record.requests['sandlink/trustWorkspace'], 'nothing trusted')
  assert_equal(1, #record.prompts, 'asked once')
  assert_equal('sandlink.trust', record.prompts[1].kind, 'the trust prompt')
  -- The server's message: which profile, and what it would loosen (the variable passed, by name).
  assert_matches('[Pp]rofile "loose"', record.prompts[1].prompt, 'the prompt names the profile')
  assert_matches('SANDLINK_TEST_PASSED', record.prompts[1].prompt, 'the prompt names the variable passed on')
  assert_true(harness.find_notification(captured, 'chose not to trust') ~= nil, 'the user is told: ' .. vim.inspect(captured))
  assert_equal('sandlink: disconnected', require('sandlink').statusline(), 'statusline')
end)

test('connecting_with_a_profile_that_needs_trust_should_trust_what_was_shown_and_connect_when_accepted', function()
  local trust_file = vim.env.SANDLINK_STATE_DIR .. '/trust.json'
  local trust_before = table.concat(vim.fn.readfile(trust_file), '\n')
  local err, session, record = connect_answering_trust({ profile = 'loose' }, 'Trust workspace')
  assert_true(err == nil, 'connected: ' .. vim.inspect(err))
  assert_equal('loose', session.profile, 'the session uses the profile')
  assert_true(current_workspace().session ~= nil, 'the plugin holds the session')
  assert_equal(1, #record.prompts, 'asked once')
  assert_equal(2, #record.requests['sandlink/connect'], 'the refused connect and one retry')
  assert_equal('loose', record.requests['sandlink/connect'][2].profile, 'the retry uses the same profile')
  local trusted = record.requests['sandlink/trustWorkspace']
  assert_equal(1, #trusted, 'one trust request')
  assert_true(trusted[1].trust == true and type(trusted[1].fingerprint) == 'string' and trusted[1].fingerprint ~= '',
    'trusts with the shown fingerprint: ' .. vim.inspect(trusted[1]))
  local trust_after = table.concat(vim.fn.readfile(trust_file), '\n')
  assert_true(trust_after ~= trust_before, 'trust.json was written')
  assert_true(trust_after:find(trusted[1].fingerprint, 1, true) ~= nil, 'it holds the fingerprint shown: ' .. trust_after)
  vim.cmd('Sandlink disconnect')
  wait_for('the session to end', 15000, function()
    return current_workspace().session == nil
  end)
end)

test('a_task_code_action_should_ask_for_trust_and_run_the_task_by_name_once_trusted', function()
  -- A changed task: the workspace is no longer trusted as its file is now.
  local lines = vim.deepcopy(workspace_file_before_profiles)
  for index, line in ipairs(lines) do
    if line:find('^greet') then
      lines[index] = 'greet = "echo from a code action; echo ran > action-ran.txt"'
    end
  end
  vim.fn.writefile(vim.list_extend(lines, loose_profile_lines), workspace_file)
  local err, _, connect_record = connect_answering_trust({ driver = 'local' }, 'Do not trust it')
  assert_true(err == nil and current_workspace().session ~= nil, 'a plain local session needs no trust: ' .. vim.inspect(err))
  assert_equal(0, #connect_record.prompts, 'and asks for none')
  vim.cmd('edit ' .. vim.fn.fnameescape(workspace_dir .. '/hello.txt'))
  local output = require('sandlink.output')
  local previous_view = output.last_view
  -- The first menu for a buffer opened a moment ago may come without the task: until it offers it, ask again.
  local chosen, menus_without_it, asked_at = false, 0, 0
  local record = recording_requests_and_prompts({ 'sandlink/run' }, function(items, options)
    if options.kind == 'sandlink.trust' then
      return 'Trust workspace'
    end
    for _, item in ipairs(items) do
      if options.format_item(item):find('Run task greet', 1, true) then
        chosen = true
        return item
      end
    end
    menus_without_it = menus_without_it + 1
  end, function()
    wait_for('the task to start', 20000, function()
      local now = (vim.uv or vim.loop).hrtime() / 1e6
      if not chosen and now - asked_at > 1000 then
        asked_at = now
        vim.lsp.buf.code_action()
      end
      local view = output.last_view
      return view ~= previous_view
        and (vim.b[view.buffer].sandlink_run_id ~= nil or last_line(view.buffer):find('^%[not started'))
    end)
  end)
  for _ = 1, menus_without_it do
    table.remove(record.prompts, 1)
  end
  local view = output.last_view
  assert_equal('codeaction', record.prompts[1] and record.prompts[1].kind, 'the code action menu was shown first')
  local offered = table.concat(record.prompts[1].shown, '\n')
  assert_matches('Run task greet %(echo from a code action; echo ran > action%-ran%.txt%)', offered, 'the task action')
  assert_equal(2, #record.prompts, 'then the trust prompt, once')
  assert_matches('echo from a code action', record.prompts[2].prompt, 'the prompt shows what the task runs')
  assert_equal(2, #record.requests['sandlink/run'], 'the refused run and one retry')
  for _, params in ipairs(record.requests['sandlink/run']) do
    assert_true(params.task == 'greet' and params.command == nil, 'by name only: ' .. vim.inspect(params))
  end
  local run = require('sandlink.state').runs[vim.b[view.buffer].sandlink_run_id]
  assert_true(run ~= nil, 'the task started: ' .. buffer_text(view.buffer))
  wait_for_exit(run)
  assert_matches('from a code action', buffer_text(view.buffer), 'its output in the plugin\'s buffer')
  assert_true(vim.fn.filereadable(sandbox_file('action-ran.txt')) == 1, 'the task ran in the sandbox')
  vim.fn.writefile(workspace_file_before_profiles, workspace_file)
  vim.cmd('Sandlink disconnect')
  wait_for('the session to end', 15000, function()
    return current_workspace().session == nil
  end)
end)

test('run_while_disconnected_should_connect_first_and_then_run', function()
  local run = start_run('echo after reconnecting')
  wait_for_exit(run)
  assert_true(current_workspace().session ~= nil, 'a new session')
  assert_true(vim.tbl_contains(vim.api.nvim_buf_get_lines(run.view.buffer, 0, -1, false), 'after reconnecting'),
    'output: ' .. buffer_text(run.view.buffer))
  if vim.fn.has('nvim-0.8') == 1 then
    local seen_data
    local autocmd_id = vim.api.nvim_create_autocmd('User', {
      pattern = 'SandlinkStatus',
      callback = function(event)
        seen_data = event.data
      end,
    })
    require('sandlink.state').announce_change()
    vim.api.nvim_del_autocmd(autocmd_id)
    assert_true(type(seen_data) == 'table', 'User SandlinkStatus carries data on 0.8+')
    assert_matches('^sandlink: local active', seen_data.status, 'data.status')
  end
end)

-- The session records in the server's state directory, by id.
local function session_records()
  local ids = {}
  for _, path in ipairs(vim.fn.glob(vim.env.SANDLINK_STATE_DIR .. '/sessions/*/session.json', false, true)) do
    table.insert(ids, vim.fn.fnamemodify(path, ':h:t'))
  end
  return ids
end

-- The line of a select prompt that contains `text` (plain), or nil.
local function shown_line(prompt, text)
  for _, line in ipairs(prompt and prompt.shown or {}) do
    if line:find(text, 1, true) then
      return line
    end
  end
  return nil
end

test('runs_should_list_running_and_recent_runs_and_cancel_one_or_show_its_output', function()
  local finished = start_run('echo listed later')
  wait_for_exit(finished)
  local running = start_run('sleep 30; echo never')
  local done
  local record = recording_requests_and_prompts({ 'sandlink/cancel' }, function(items, options)
    if options.kind == 'sandlink.runs' then
      for _, run in ipairs(items) do
        if run.run_id == running.run_id then
          return run
        end
      end
    elseif options.kind == 'sandlink.run_action' then
      for _, action in ipairs(items) do
        if action.id == 'cancel' then
          return action
        end
      end
    end
  end, function()
    require('sandlink.commands').runs(function()
      done = true
    end)
    wait_for('the cancel to be answered', 10000, function()
      return done
    end)
  end)
  wait_for_exit(running)
  assert_true(running.exit.cancelled == true, 'the run was cancelled: ' .. vim.inspect(running.exit))
  assert_equal('sandlink.runs', record.prompts[1].kind, 'the runs list first')
  assert_matches('^%[running%] sleep 30; echo never', record.prompts[1].shown[1], 'the running run comes first')
  assert_matches('^%[exit 0 after [^%]]+%] echo listed later', shown_line(record.prompts[1], 'echo listed later') or '',
    'a finished run says how it ended')
  assert_equal({ 'Show output', 'Cancel' }, record.prompts[2].shown, 'a running run can be cancelled')
  assert_equal({ { runId = running.run_id } }, record.requests['sandlink/cancel'], 'the cancel went to the server')
  -- A finished run offers only its output, which comes back into view.
  vim.cmd('silent! only')
  local shown_record = recording_requests_and_prompts({}, function(items, options)
    if options.kind == 'sandlink.runs' then
      for _, run in ipairs(items) do
        if run.run_id == finished.run_id then
          return run
        end
      end
    end
    return items[1]
  end, function()
    vim.cmd('Sandlink runs')
  end)
  assert_equal({ 'Show output' }, shown_record.prompts[2].shown, 'nothing to cancel on a finished run')
  assert_true(#vim.fn.win_findbuf(finished.view.buffer) > 0, 'its output buffer is shown again')
end)

test('sessions_should_list_kept_and_orphaned_sessions_and_reattach_and_remove_them', function()
  local commands = require('sandlink.commands')
  local workspace = current_workspace()
  local kept_id = workspace.session.sessionId
  vim.cmd('Sandlink disconnect keep')
  wait_for('the session to be kept', 15000, function()
    return current_workspace().session == nil
  end)
  -- `reuse=` completes the kept session once the plugin has heard of it.
  wait_for('the kept session in the completion', 10000, function()
    return vim.tbl_contains(commands.complete('reuse=', 'Sandlink connect reuse=', 23), 'reuse=' .. kept_id)
  end)
  -- A sandlink killed while it holds a session (a crashed editor) leaves it behind, re-attachable.
  local other_workspace = vim.fn.tempname()
  vim.fn.mkdir(other_workspace, 'p')
  vim.fn.writefile({ 'another project' }, other_workspace .. '/other.txt')
  local records_before = session_records()
  local job = vim.fn.jobstart({ server_binary, 'run', '--workspace', other_workspace, '--', 'sleep 20' }, { detach = true })
  local orphan_id
  local ok, err = pcall(wait_for, 'the killed run\'s session record', 20000, function()
    for _, id in ipairs(session_records()) do
      if not vim.tbl_contains(records_before, id) then
        orphan_id = id
        return true
      end
    end
  end)
  vim.wait(500)
  -- detach made it a process group leader: the group goes, the CLI and what it started.
  local uv = vim.uv or vim.loop
  uv.kill(-vim.fn.jobpid(job), 'sigkill')
  assert_true(ok, tostring(err))
  -- The killed sandlink's hold on its session goes with its last process; on a busy machine that takes a moment.
  local left_behind, asked_at = false, 0
  wait_for("the killed sandlink's session to be left behind", 20000, function()
    if not left_behind and uv.now() - asked_at > 300 then
      asked_at = uv.now()
      require('sandlink.client').request(workspace, 'sandlink/sessions', vim.empty_dict(), function(_, result)
        for _, listed_session in ipairs(type(result) == 'table' and result.sessions or {}) do
          left_behind = left_behind or (listed_session.sessionId == orphan_id and listed_session.held == 'orphaned')
        end
      end)
    end
    return left_behind
  end)

  -- `reuse=` alone lists the workspace's kept sandboxes with what each one is.
  local listed = false
  local picked = recording_requests_and_prompts({}, function()
    listed = true
    return nil
  end, function()
    vim.cmd('Sandlink connect reuse=')
    wait_for('the re-attach list', 10000, function()
      return listed
    end)
  end)
  assert_equal('sandlink.reattach', picked.prompts[1].kind, 'the re-attach list')
  assert_matches('^' .. vim.pesc(kept_id) .. '  kept, local, workspace, active ', picked.prompts[1].shown[1] or '',
    'the kept session with its driver, workspace and age')
  assert_true(shown_line(picked.prompts[1], orphan_id) == nil, "another workspace's sandbox is not offered")

  -- :Sandlink sessions lists both and re-attaches the kept one.
  local record = recording_requests_and_prompts({ 'sandlink/connect' }, function(items, options)
    if options.kind == 'sandlink.sessions' then
      for _, session in ipairs(items) do
        if session.sessionId == kept_id then
          return session
        end
      end
    elseif options.kind == 'sandlink.session_action' then
      return items[1]
    end
  end, function()
    vim.cmd('Sandlink sessions')
    wait_for('the re-attached session', 30000, function()
      return current_workspace().session ~= nil
    end)
  end)
  assert_equal(kept_id, current_workspace().session.sessionId, 'the same session, re-attached')
  assert_equal(kept_id, record.requests['sandlink/connect'][1].reuse, 'connect reuse')
  assert_true(record.requests['sandlink/connect'][1].driver == nil, 'a re-attach sends no driver: '
    .. vim.inspect(record.requests['sandlink/connect'][1]))
  assert_matches('kept, local, workspace, active ', shown_line(record.prompts[1], kept_id) or '', 'the kept line')
  assert_matches('left by an exited sandlink, local, ' .. vim.pesc(vim.fn.fnamemodify(other_workspace, ':t')),
    shown_line(record.prompts[1], orphan_id) or '', 'the orphaned line')
  assert_equal({ 'Re-attach', 'Remove the sandbox' }, record.prompts[2].shown, 'what a kept session offers')

  -- The orphan belongs to another workspace: it can only be removed from here.
  local removed
  local remove_record = recording_requests_and_prompts({ 'sandlink/disconnect' }, function(items, options)
    if options.kind == 'sandlink.sessions' then
      for _, session in ipairs(items) do
        if session.sessionId == orphan_id then
          return session
        end
      end
    end
    return items[1]
  end, function()
    commands.sessions(function(remove_err)
      removed = remove_err == nil
    end)
    wait_for('the removal', 20000, function()
      return removed ~= nil
    end)
  end)
  assert_true(removed, 'removed')
  assert_matches('connected here', shown_line(remove_record.prompts[1], kept_id) or '', 'the own session is marked')
  assert_equal({ 'Remove the sandbox' }, remove_record.prompts[2].shown, 'what an orphan of another workspace offers')
  assert_equal({ { sessionId = orphan_id, keep = false } }, remove_record.requests['sandlink/disconnect'], 'removed')
  assert_true(not vim.tbl_contains(session_records(), orphan_id), 'its record is gone')
  assert_true(vim.fn.isdirectory(vim.env.SANDLINK_STATE_DIR .. '/sessions/' .. orphan_id .. '/root') == 0,
    'its sandbox is gone')
end)

-- The server processes this Neovim started, found through /proc so that only our own children are touched.
local function server_child_pids()
  local pids = {}
  local nvim_pid = vim.fn.getpid()
  for _, task in ipairs(vim.fn.glob('/proc/' .. nvim_pid .. '/task/*/children', false, true)) do
    for pid in table.concat(vim.fn.readfile(task), ' '):gmatch('%d+') do
      local command_line = table.concat(vim.fn.readfile('/proc/' .. pid .. '/cmdline', 'b'), '\n')
      if command_line:find('sandlink', 1, true) then
        table.insert(pids, tonumber(pid))
      end
    end
  end
  return pids
end

test('a_server_that_dies_should_be_reported_and_setup_should_start_a_new_one', function()
  local pids = server_child_pids()
  assert_equal(1, #pids, 'one server process')
  local captured, stop = harness.capture_notifications()
  local uv = vim.uv or vim.loop
  uv.kill(pids[1], 'sigkill')
  local ok, err = pcall(wait_for, 'the workspace to notice', 10000, function()
    return current_workspace().stopped
  end)
  stop()
  assert_true(ok, tostring(err))
  assert_equal('sandlink: server stopped', require('sandlink').statusline(), 'statusline')
  assert_true(harness.find_notification(captured, 'the server exited') ~= nil, 'a warning: ' .. vim.inspect(captured))
  local workspace = require('sandlink').setup({ server_path = server_binary, driver = 'local' })
  wait_for('the new server to initialize', 15000, function()
    return workspace.ready
  end)
  assert_equal('sandlink: disconnected', require('sandlink').statusline(), 'statusline after the restart')
  local run = start_run('echo alive again')
  wait_for_exit(run)
  assert_true(vim.tbl_contains(vim.api.nvim_buf_get_lines(run.view.buffer, 0, -1, false), 'alive again'),
    'a run works on the new server: ' .. buffer_text(run.view.buffer))
end)

test('setup_with_a_missing_binary_should_say_how_to_fix_it', function()
  local other_root = vim.fn.tempname()
  vim.fn.mkdir(other_root, 'p')
  local captured, stop = harness.capture_notifications()
  local workspace = require('sandlink').setup({ server_path = other_root .. '/no-such-sandlink', root_dir = other_root })
  stop()
  assert_true(workspace.stopped == true, 'the workspace is marked stopped')
  assert_equal('sandlink: server stopped', require('sandlink.state').statusline(workspace), 'statusline')
  local message = harness.find_notification(captured, 'was not found')
  assert_true(message ~= nil and message.message:find('server_path', 1, true) ~= nil,
    'the error names the setting to change: ' .. vim.inspect(captured))
end)
