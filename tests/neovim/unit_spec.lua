-- Tests of the plugin's pieces that need no server: output streaming, exit lines, tasks, arguments, status, previews.

local harness = require('harness')
local test, assert_equal, assert_matches, assert_true = harness.test, harness.assert_equal, harness.assert_matches,
  harness.assert_true

local function buffer_lines(buffer)
  return vim.api.nvim_buf_get_lines(buffer, 0, -1, false)
end

local function highlighted_rows(buffer, group)
  local output = require('sandlink.output')
  local rows = {}
  for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(buffer, output.namespace, 0, -1, { details = true })) do
    if mark[4] and mark[4].hl_group == group then
      rows[mark[2]] = true
    end
  end
  return rows
end

test('output_should_continue_a_line_split_across_chunks_of_the_same_stream', function()
  local output = require('sandlink.output')
  local view = output.create('echo', '/tmp')
  output.append(view, 'stdout', 'hel')
  output.append(view, 'stdout', 'lo\nwor')
  output.append(view, 'stdout', 'ld\n')
  output.append(view, 'stdout', 'last')
  assert_equal({ '$ echo', 'hello', 'world', 'last' }, buffer_lines(view.buffer), 'buffer lines')
end)

test('output_should_start_a_new_line_when_the_other_stream_interrupts_an_open_line', function()
  local output = require('sandlink.output')
  local view = output.create('mixed', '/tmp')
  output.append(view, 'stdout', 'progress ')
  output.append(view, 'stderr', 'warning: x\n')
  output.append(view, 'stdout', 'done\n')
  assert_equal({ '$ mixed', 'progress ', 'warning: x', 'done' }, buffer_lines(view.buffer), 'buffer lines')
  local stderr_rows = highlighted_rows(view.buffer, 'SandlinkStderr')
  assert_true(stderr_rows[2], 'the stderr line is highlighted as SandlinkStderr')
  assert_true(not stderr_rows[1] and not stderr_rows[3], 'stdout lines are not highlighted as stderr')
end)

test('output_buffer_should_not_be_modifiable_by_the_user', function()
  local output = require('sandlink.output')
  local view = output.create('x', '/tmp')
  output.append(view, 'stdout', 'a\n')
  assert_equal(false, vim.bo[view.buffer].modifiable, 'modifiable')
  assert_equal('nofile', vim.bo[view.buffer].buftype, 'buftype')
end)

test('exit_line_should_say_how_the_run_ended', function()
  local output = require('sandlink.output')
  assert_equal('[exit 0 after 250 ms]', output.exit_line({ exitCode = 0, cancelled = false, timedOut = false, durationMs = 250 }))
  assert_equal('[exit 2 after 1.5 s] full log: /tmp/l',
    output.exit_line({ exitCode = 2, cancelled = false, timedOut = false, durationMs = 1500, logPath = '/tmp/l' }))
  assert_matches('^%[exit: cancelled', output.exit_line({ exitCode = vim.NIL, cancelled = true, timedOut = false }))
  assert_matches('^%[exit: timed out', output.exit_line({ exitCode = vim.NIL, cancelled = false, timedOut = true }))
  assert_matches('SIGKILL', output.exit_line({ exitCode = vim.NIL, signal = 'SIGKILL', cancelled = false, timedOut = false }))
end)

test('tasks_should_come_from_the_servers_answer', function()
  local read_tasks = require('sandlink.commands').read_tasks
  local workspace = { tasks = { { name = 'test', command = 'cargo test', title = 'test (cargo test)' },
    { name = 'lint', command = 'cargo clippy', title = 'lint (cargo clippy)' } } }
  assert_equal({ test = 'cargo test', lint = 'cargo clippy' }, read_tasks(workspace), 'tasks')
  assert_equal({}, read_tasks({}), 'none before the server answered')
  assert_equal({}, read_tasks(nil), 'none without a workspace')
end)

test('task_commands_should_be_shown_as_the_server_titles_show_them', function()
  local shown_command = require('sandlink.commands').shown_command
  assert_equal('npm test ; echo INJECTED', shown_command('npm test' .. string.rep(' ', 200) .. '; echo INJECTED'))
  assert_equal('make -j4 all', shown_command('make\t-j4\n\tall'))
  -- No-break and ideographic spaces are whitespace to the server too.
  assert_equal('a b c', shown_command('a\194\160\194\160b\227\128\128c'))
  local shown = shown_command('cargo test ' .. string.rep('--features a ', 20))
  assert_matches('^cargo test %-%-features a', shown, 'starts as the command does')
  assert_matches('…$', shown, 'ends with an ellipsis')
  assert_true(vim.fn.strchars(shown) <= 60, 'at most 60 characters: ' .. shown)
  assert_equal('é' .. string.rep('x', 58) .. '…', shown_command('é' .. string.rep('x', 80)), 'counts characters, not bytes')
end)

test('connect_arguments_should_treat_a_bare_word_as_a_profile', function()
  local parse = require('sandlink.commands').parse_connect_arguments
  assert_equal({ profile = 'work' }, parse({ 'work' }))
  assert_equal({ driver = 'docker', sync = false, settings = { image = 'node:20' } },
    parse({ 'driver=docker', 'sync=false', 'image=node:20' }))
end)

test('completion_should_offer_subcommands_then_their_arguments', function()
  local commands = require('sandlink.commands')
  assert_equal({ 'allow', 'cancel', 'conflicts', 'connect', 'disconnect', 'extend', 'preview', 'profiles', 'quickfix', 'resolve',
    'run', 'runs', 'secrets', 'sessions', 'shell', 'status', 'sync', 'task', 'terminal' }, commands.complete('', 'Sandlink ', 9),
    'subcommands')
  assert_equal({ 'commit', 'end', 'list', 'pr', 'push', 'start', 'status' }, commands.complete('', 'Sandlink task ', 14),
    'task actions')
  assert_equal({ 'connect' }, commands.complete('conn', 'Sandlink conn', 13), 'prefix')
  assert_equal({ 'up', 'down', 'both' }, commands.complete('', 'Sandlink sync ', 14), 'sync directions')
  assert_equal({ 'down' }, commands.complete('d', 'Sandlink sync d', 15), 'sync prefix')
end)

test('statusline_should_describe_each_state_of_a_workspace', function()
  local state = require('sandlink.state')
  local workspace = { root_dir = '/nowhere', ready = false }
  assert_equal('sandlink: starting', state.statusline(workspace))
  workspace.ready = true
  assert_equal('sandlink: disconnected', state.statusline(workspace))
  workspace.connecting = true
  assert_equal('sandlink: connecting', state.statusline(workspace))
  workspace.session = { sessionId = 's1', driver = 'docker', profile = 'work', state = 'active',
    sync = { pending = 3, conflicts = {} } }
  assert_equal('sandlink: work active, 3 pending', state.statusline(workspace))
  workspace.stopped = true
  assert_equal('sandlink: server stopped', state.statusline(workspace))
end)

test('open_url_should_open_with_vim_ui_open_or_copy_the_url', function()
  local commands = require('sandlink.commands')
  local captured, stop = harness.capture_notifications()
  local original_open = vim.ui.open
  local opened_url
  if original_open then
    -- Neovim 0.10+: vim.ui.open is used; replaced here so that the test does not start a browser.
    vim.ui.open = function(url)
      opened_url = url
      return {}, nil
    end
  end
  local ok, how = pcall(commands.open_url, 'http://127.0.0.1:5173/')
  vim.ui.open = original_open
  stop()
  assert_true(ok, 'open_url does not fail: ' .. tostring(how))
  if original_open then
    assert_equal('opened', how, 'how the URL was handed over')
    assert_equal('http://127.0.0.1:5173/', opened_url, 'URL given to vim.ui.open')
  else
    assert_equal('copied', how, 'how the URL was handed over')
    assert_equal('http://127.0.0.1:5173/', vim.fn.getreg('"'), 'unnamed register')
    assert_true(harness.find_notification(captured, '127%.0%.0%.1:5173') ~= nil, 'the URL is shown')
  end
end)

test('timeout_warning_should_reach_vim_notify_as_a_warning', function()
  local handlers = require('sandlink.handlers').for_client_config()
  local captured, stop = harness.capture_notifications()
  handlers['sandlink/timeoutWarning'](nil, { sessionId = 'nobody', expiresAt = '2030-01-01T00:00:00Z', secondsLeft = 300 },
    { client_id = -1 })
  stop()
  local warning = harness.find_notification(captured, 'expires in 5 minutes')
  assert_true(warning ~= nil, 'a notification about the expiry: ' .. vim.inspect(captured))
  assert_equal(vim.log.levels.WARN, warning.level, 'level')
end)

test('run_limit_warning_should_name_the_run_and_leave_the_sessions_expiry_alone', function()
  local handlers = require('sandlink.handlers').for_client_config()
  local captured, stop = harness.capture_notifications()
  handlers['sandlink/timeoutWarning'](nil, {
    sessionId = 'nobody', expiresAt = '2030-01-01T00:00:00Z', secondsLeft = 600, reason = 'runLimit', runId = 'run-limited',
  }, { client_id = -1 })
  stop()
  local warning = harness.find_notification(captured, 'run run%-limited is stopped at its time limit in 10 minutes')
  assert_true(warning ~= nil, 'a notification about the run: ' .. vim.inspect(captured))
  assert_equal(vim.log.levels.WARN, warning.level, 'level')
  assert_true(harness.find_notification(captured, 'sandbox expires') == nil, 'not a sandbox expiry')
end)

test('output_that_arrives_before_the_run_response_should_be_replayed_into_the_run_buffer', function()
  local state = require('sandlink.state')
  local handlers = require('sandlink.handlers')
  local output = require('sandlink.output')
  state.run_requests_in_flight = state.run_requests_in_flight + 1
  handlers.on_output({ runId = 'early', stream = 'stdout', text = 'first\n', seq = 0 }, nil)
  state.run_requests_in_flight = state.run_requests_in_flight - 1
  local view = output.create('early', '/tmp')
  state.runs['early'] = { run_id = 'early', view = view, finished = false, started_order = 0, command = 'early' }
  handlers.replay_held_messages('early', nil)
  assert_equal({ '$ early', 'first' }, buffer_lines(view.buffer), 'buffer lines')
  state.runs['early'] = nil
end)

test('help_file_should_build_tags_without_errors', function()
  local directory = vim.fn.tempname()
  vim.fn.mkdir(directory, 'p')
  local help_lines = vim.fn.readfile(vim.env.SANDLINK_TEST_REPO .. '/neovim-plugin/doc/sandlink.txt')
  vim.fn.writefile(help_lines, directory .. '/sandlink.txt')
  vim.cmd('helptags ' .. vim.fn.fnameescape(directory))
  local tags = table.concat(vim.fn.readfile(directory .. '/tags'), '\n')
  for _, tag in ipairs({ ':Sandlink', 'sandlink.setup()', 'sandlink.statusline()', 'SandlinkStatus' }) do
    assert_matches('\n?' .. vim.pesc(tag) .. '\t', tags, 'tag ' .. tag)
  end
end)

test('old_finished_output_buffers_should_be_wiped_beyond_keep_buffers', function()
  local config = require('sandlink.config')
  local output = require('sandlink.output')
  local previous_keep = config.options.output.keep_buffers
  config.options.output.keep_buffers = 2
  local first = output.create('first', '/tmp')
  output.finish(first, { exitCode = 0, cancelled = false, timedOut = false })
  local second = output.create('second', '/tmp')
  local third = output.create('third', '/tmp')
  local fourth = output.create('fourth', '/tmp')
  config.options.output.keep_buffers = previous_keep
  assert_true(not vim.api.nvim_buf_is_valid(first.buffer), 'the oldest finished buffer is wiped')
  assert_true(vim.api.nvim_buf_is_valid(second.buffer), 'an unfinished buffer is kept')
  assert_true(vim.api.nvim_buf_is_valid(third.buffer) and vim.api.nvim_buf_is_valid(fourth.buffer), 'new buffers')
end)

test('the_end_of_a_run_no_window_shows_should_be_notified', function()
  local state = require('sandlink.state')
  local handlers = require('sandlink.handlers')
  local view = require('sandlink.output').create('make', '/tmp')
  state.runs['hidden'] = { run_id = 'hidden', view = view, finished = false, started_order = 0, command = 'make' }
  local captured, stop = harness.capture_notifications()
  handlers.on_exit({ runId = 'hidden', exitCode = 2, cancelled = false, timedOut = false, durationMs = 10 }, nil)
  stop()
  state.runs['hidden'] = nil
  local notification = harness.find_notification(captured, '`make` %[exit 2')
  assert_true(notification ~= nil, 'a notification: ' .. vim.inspect(captured))
  assert_equal(vim.log.levels.WARN, notification.level, 'a failed run warns')
end)

test('run_without_a_command_line_should_ask_for_one', function()
  local asked_prompt
  local original_input = vim.ui.input
  vim.ui.input = function(options, on_confirm)
    asked_prompt = options.prompt
    on_confirm(nil)
  end
  local ok, err = pcall(require('sandlink.commands').dispatch, 'run')
  vim.ui.input = original_input
  assert_true(ok, tostring(err))
  assert_matches('^Run in the sandbox', asked_prompt, 'prompt')
end)

test('every_command_of_the_servers_code_actions_should_have_a_handler_in_the_plugin', function()
  local handlers = require('sandlink.commands').lsp_command_handlers()
  local expected, handled = {}, {}
  for _, command in pairs(require('sandlink.protocol').command) do
    table.insert(expected, command)
  end
  for command, handler in pairs(handlers) do
    assert_true(type(handler) == 'function', command .. ' has a function')
    table.insert(handled, command)
  end
  table.sort(expected)
  table.sort(handled)
  assert_equal(expected, handled, 'handled commands')
end)

test('a_code_action_run_with_a_command_line_instead_of_a_task_should_run_nothing', function()
  local commands = require('sandlink.commands')
  local original_run = commands.run
  local ran = false
  commands.run = function()
    ran = true
  end
  local captured, stop = harness.capture_notifications()
  local ok, err = pcall(commands.lsp_command_handlers()['sandlink.run'],
    { command = 'sandlink.run', arguments = { { sessionId = 'any', command = 'curl example.invalid | sh' } } }, {})
  stop()
  commands.run = original_run
  assert_true(ok, tostring(err))
  assert_true(not ran, 'nothing ran')
  assert_true(harness.find_notification(captured, 'runs a .sandlink.toml task by name') ~= nil, vim.inspect(captured))
end)

-- Sessions as `sandlink/sessions` lists them, for :Sandlink sessions and `:Sandlink connect reuse=`.
local session_now = require('sandlink.sessions').epoch_seconds('2026-01-01T12:00:00Z')
local function listed_session(overrides)
  return vim.tbl_extend('force', {
    sessionId = 'local-1',
    driver = 'local',
    state = 'active',
    workspaceFolder = 'file:///home/me/app',
    remoteRoot = '/state/sessions/local-1/root',
    startedAt = '2026-01-01T11:00:00Z',
    lastActivity = '2026-01-01T11:55:00Z',
    previews = {},
    sync = { pending = 0, conflicts = {} },
    jobs = {},
  }, overrides or {})
end
local kept_session = listed_session({ sessionId = 'local-kept', state = 'disconnected', lastActivity = '2026-01-01T10:00:00Z',
  held = 'kept', message = 'Kept; connect again from this workspace to re-attach (local-kept).' })
local orphaned_session = listed_session({ sessionId = 'local-orphan', state = 'disconnected', held = 'orphaned',
  message = 'Left by a sandlink that exited; connect again from its workspace to re-attach (local-orphan).' })
local other_window_session = listed_session({ sessionId = 'local-busy', held = 'elsewhere',
  message = 'Attached by another sandlink (process 42, probably another editor window).' })
local other_folder_session = listed_session({ sessionId = 'docker-other', driver = 'docker', state = 'disconnected',
  workspaceFolder = 'file:///home/me/other', held = 'kept', message = 'Kept; connect again from this workspace to re-attach (docker-other).' })

test('session_times_should_be_read_as_utc_and_ages_said_as_a_person_would', function()
  local sessions = require('sandlink.sessions')
  assert_equal(0, sessions.epoch_seconds('1970-01-01T00:00:00Z'), 'the epoch')
  assert_equal(1767268800, session_now, '2026-01-01T12:00:00Z')
  assert_equal(session_now, sessions.epoch_seconds('2026-01-01T13:30:00.123456+01:30'), 'an offset')
  assert_equal(session_now + 86400 * 60, sessions.epoch_seconds('2026-03-02T12:00:00Z'), 'across February')
  assert_equal('just now', sessions.age('2026-01-01T11:59:30Z', session_now), 'seconds')
  assert_equal('5 min ago', sessions.age('2026-01-01T11:55:00Z', session_now), 'minutes')
  assert_equal('2 h ago', sessions.age('2026-01-01T10:00:00Z', session_now), 'hours')
  assert_equal('3 days ago', sessions.age('2025-12-29T12:00:00Z', session_now), 'days')
  assert_equal(nil, sessions.age('not a time', session_now), 'unreadable')
end)

test('a_listed_session_should_be_described_by_where_it_stands_its_driver_workspace_and_last_activity', function()
  local sessions = require('sandlink.sessions')
  assert_equal('kept', sessions.standing(kept_session, nil), 'kept')
  assert_equal('orphaned', sessions.standing(orphaned_session, nil), 'orphaned')
  assert_equal('elsewhere', sessions.standing(other_window_session, nil), 'elsewhere')
  assert_equal('here', sessions.standing(listed_session(), 'local-1'), 'here')
  assert_equal('local-kept  kept, local, app, active 2 h ago', sessions.describe(kept_session, nil, session_now), 'kept')
  assert_equal('local-orphan  left by an exited sandlink, local, app, active 5 min ago',
    sessions.describe(orphaned_session, nil, session_now), 'orphaned')
  assert_equal('local-1  connected here, dev (local), app, active 5 min ago',
    sessions.describe(listed_session({ profile = 'dev' }), 'local-1', session_now), 'with a profile')
end)

test('session_actions_should_offer_only_what_applies', function()
  local sessions = require('sandlink.sessions')
  local disconnected = { root_dir = '/home/me/app' }
  local connected = { root_dir = '/home/me/app', session = listed_session() }
  local function ids(session, workspace)
    return vim.tbl_map(function(action)
      return action.id
    end, sessions.actions_for(session, workspace))
  end
  assert_equal({ 'reattach', 'remove' }, ids(kept_session, disconnected), 'a kept session of this workspace')
  assert_equal({ 'remove' }, ids(kept_session, connected), 'no re-attach while connected')
  assert_equal({ 'remove' }, ids(other_folder_session, disconnected), "another workspace's kept session")
  assert_equal({}, ids(other_window_session, disconnected), "another window's session")
  assert_equal({ 'disconnect_keep', 'disconnect_remove' }, ids(listed_session(), connected), 'the own session')
  local reattachable = sessions.reattachable({ kept_session, orphaned_session, other_window_session, other_folder_session },
    disconnected)
  assert_equal({ 'local-kept', 'local-orphan' }, vim.tbl_map(function(session)
    return session.sessionId
  end, reattachable), 'what reuse= offers')
  assert_equal({}, sessions.reattachable({ kept_session }, connected), 'nothing while connected')
end)

test('connect_reuse_should_complete_only_the_kept_sessions_of_the_workspace', function()
  local commands, state = require('sandlink.commands'), require('sandlink.state')
  local root = vim.fn.getcwd()
  local saved = state.workspaces
  state.workspaces = { [root] = { root_dir = root, known_sessions = {
    listed_session({ sessionId = 'local-here-kept', state = 'disconnected', workspaceFolder = vim.uri_from_fname(root),
      message = 'Kept; connect again from this workspace to re-attach (local-here-kept).' }),
    other_folder_session, other_window_session,
  } } }
  local ok, candidates = pcall(commands.complete, 'reuse=', 'Sandlink connect reuse=', 23)
  state.workspaces = saved
  assert_true(ok, tostring(candidates))
  assert_equal({ 'reuse=', 'reuse=local-here-kept' }, candidates, 'reuse candidates')
end)

test('runs_should_be_listed_running_first_then_the_newest_finished_ones', function()
  local sessions, output = require('sandlink.sessions'), require('sandlink.output')
  local runs = {
    a = { run_id = 'a', root_dir = '/w', command = 'make', finished = true, started_order = 1,
      exit = { exitCode = 2, cancelled = false, timedOut = false, durationMs = 1500, logPath = '/logs/a' } },
    b = { run_id = 'b', root_dir = '/w', command = 'npm start', finished = false, started_order = 2 },
    c = { run_id = 'c', root_dir = '/w', command = 'ls', finished = true, started_order = 3,
      exit = { exitCode = 0, cancelled = false, timedOut = false, durationMs = 20 } },
    d = { run_id = 'd', root_dir = '/other', command = 'pwd', finished = false, started_order = 4 },
  }
  local listed = sessions.runs_to_list(runs, '/w', 20)
  assert_equal({ 'b', 'c', 'a' }, vim.tbl_map(function(run)
    return run.run_id
  end, listed), 'order')
  assert_equal('[running] npm start  (b)', sessions.describe_run(listed[1], output.exit_line), 'running')
  assert_equal('[exit 2 after 1.5 s] make  (a)', sessions.describe_run(listed[3], output.exit_line), 'finished')
  assert_equal(2, #sessions.runs_to_list(runs, '/w', 1), 'the limit applies to finished runs')
end)

test('a_connect_refused_for_too_many_sandboxes_should_name_the_command_that_lists_them', function()
  local client, commands = require('sandlink.client'), require('sandlink.commands')
  local original_request = client.request
  client.request = function(_, method, _, on_result)
    if method == 'sandlink/connect' then
      on_result({ code = -32004, message = 'There are already 10 sandboxes (the limit is 10).', data = { kind = 'limitReached' } })
    end
  end
  local captured, stop = harness.capture_notifications()
  local refused
  local ok, err = pcall(commands.connect, { workspace = { root_dir = vim.fn.getcwd(), connect_waiters = {} } }, function(connect_err)
    refused = connect_err
  end)
  stop()
  client.request = original_request
  assert_true(ok, tostring(err))
  assert_equal('limitReached', refused and refused.data.kind, 'the refusal is passed on')
  assert_true(harness.find_notification(captured, 'already 10 sandboxes') ~= nil, vim.inspect(captured))
  assert_true(harness.find_notification(captured, ':Sandlink sessions lists every sandbox') ~= nil, vim.inspect(captured))
end)

test('quickfix_items_should_be_workspace_locations_of_stack_frames_and_compiler_lines', function()
  local items = require('sandlink.quickfix').items({
    '$ node test.js',
    '/w/test.js:9',
    '    throw new Error("expected 3");',
    'Error: expected 3',
    '    at Object.<anonymous> (/w/test.js:9:11)',
    '    at Module._compile (node:internal/modules/cjs/loader:1364:14)',
    '    at helper (/w/node_modules/x/index.js:2:3)',
    '/w/src/main.c:12:5: error: expected ;',
    '/usr/lib/other.c:1:1: outside the workspace',
    '/wother/a.js:1:1: a sibling folder is not inside',
    'see http://host:8000/w/x.js:3 here',
  }, '/w/')
  assert_equal({
    { filename = '/w/test.js', lnum = 9, col = 11, text = 'Error: expected 3' },
    { filename = '/w/node_modules/x/index.js', lnum = 2, col = 3, text = 'Error: expected 3' },
    { filename = '/w/src/main.c', lnum = 12, col = 5, text = '/w/src/main.c:12:5: error: expected ;' },
  }, items, 'items')
  assert_equal({}, require('sandlink.quickfix').items({ '/w/a.js:1:1' }, nil), 'no workspace, no locations')
end)
