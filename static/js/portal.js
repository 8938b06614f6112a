/* Progressive enhancement for the portal. Every page works without this file:
   - the menu <details> is open in the HTML; on phones it is collapsed behind its toggle here;
   - copy buttons are hidden in the HTML; here they appear and copy their target's value. */
(function () {
  "use strict";

  var menu = document.querySelector("[data-collapsible-menu]");
  if (menu && window.matchMedia) {
    var narrow = window.matchMedia("(max-width: 52rem)");
    var sync = function () {
      menu.open = !narrow.matches;
    };
    sync();
    if (narrow.addEventListener) {
      narrow.addEventListener("change", sync);
    }
  }

  function fallbackCopy(input) {
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch (error) {
      return false;
    }
  }

  document.querySelectorAll("[data-copy-target]").forEach(function (button) {
    var input = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.getElementById(button.getAttribute("data-copy-status"));
    if (!input) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var report = function (ok) {
        if (status) {
          status.textContent = button.getAttribute(ok ? "data-copied" : "data-copy-failed");
        }
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(
          function () {
            report(true);
          },
          function () {
            report(fallbackCopy(input));
          }
        );
      } else {
        report(fallbackCopy(input));
      }
    });
  });
})();

/* Job logs: append new bytes from the JSON logs API every two seconds until the job has ended.
   Without JavaScript the page shows the log as of loading and a Refresh link. */
(function () {
  "use strict";

  var pre = document.querySelector("[data-log]");
  if (!pre || !window.fetch) {
    return;
  }
  var code = pre.querySelector("code");
  var state = document.querySelector("[data-log-state]");
  var badge = document.querySelector("[data-job-status] .badge");
  var labelsNode = document.getElementById("job-status-labels");
  var labels = labelsNode ? JSON.parse(labelsNode.textContent) : {};
  var offset = parseInt(pre.getAttribute("data-next-offset"), 10) || 0;
  var url = pre.getAttribute("data-log-url");
  var ended = pre.getAttribute("data-ended") === "1";
  var lastStatus = null;
  var ENDED = ["exited", "failed", "stopped", "preempted", "lost"];

  function nearBottom() {
    return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  }

  function poll() {
    fetch(url + "?offset=" + offset, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(String(response.status));
        }
        return response.json();
      })
      .then(function (body) {
        if (body.data) {
          var stick = nearBottom();
          code.appendChild(document.createTextNode(body.data));
          var empty = document.querySelector("[data-log-empty]");
          if (empty) {
            empty.remove();
          }
          if (stick) {
            pre.scrollTop = pre.scrollHeight;
          }
        }
        offset = body.next_offset;
        if (body.job_status && body.job_status !== lastStatus) {
          lastStatus = body.job_status;
          if (badge && labels[body.job_status]) {
            badge.textContent = labels[body.job_status];
          }
        }
        if (body.complete || (ENDED.indexOf(body.job_status) >= 0 && !body.data)) {
          if (state) {
            state.textContent = pre.getAttribute("data-ended-text");
          }
          return;
        }
        window.setTimeout(poll, body.data ? 500 : 2000);
      })
      .catch(function () {
        if (state) {
          state.textContent = pre.getAttribute("data-error-text");
        }
        window.setTimeout(poll, 5000);
      });
  }

  pre.scrollTop = pre.scrollHeight;
  if (!ended) {
    window.setTimeout(poll, 1000);
  }
})();

/* The order form: show the window only for reserved orders, and check the form on the server as
   it is filled in (the same validation as submitting it), updating the errors and the estimate. */
(function () {
  "use strict";

  var form = document.querySelector("[data-order-form]");
  if (!form || !window.fetch || !window.FormData) {
    return;
  }
  var estimate = form.querySelector("[data-estimate]");
  var reservedOnly = form.querySelectorAll("[data-reserved-only]");
  var timer = null;
  var touched = {};

  function term() {
    var checked = form.querySelector('input[name="term"]:checked');
    return checked ? checked.value : "on_demand";
  }

  function syncWindow() {
    var reserved = term() === "reserved";
    reservedOnly.forEach(function (node) {
      node.hidden = !reserved;
    });
  }

  function showErrors(errors) {
    form.querySelectorAll("[data-errors-for]").forEach(function (slot) {
      var name = slot.getAttribute("data-errors-for");
      var field = form.querySelector('[data-field="' + name + '"]');
      var messages = touched[name] ? errors[name] || [] : [];
      slot.textContent = "";
      if (messages.length) {
        var list = document.createElement("ul");
        list.className = "errorlist";
        messages.forEach(function (message) {
          var item = document.createElement("li");
          item.textContent = message;
          list.appendChild(item);
        });
        slot.appendChild(list);
      }
      if (field) {
        field.classList.toggle("has-error", messages.length > 0);
      }
      var input = form.querySelector('[name="' + name + '"]');
      if (input && input.type !== "radio") {
        input.setAttribute("aria-invalid", messages.length ? "true" : "false");
      }
    });
  }

  function check() {
    var data = new FormData(form);
    data.append("validate", "1");
    fetch(form.getAttribute("data-validate-url"), {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (body) {
        if (!body) {
          return;
        }
        showErrors(body.errors || {});
        if (estimate) {
          estimate.textContent = body.estimate;
          estimate.classList.toggle("alert-info", body.covered);
          estimate.classList.toggle("alert-warning", !body.covered);
        }
      })
      .catch(function () {});
  }

  var defaults = {};
  try {
    defaults = JSON.parse(form.getAttribute("data-default-limits") || "{}");
  } catch (error) {
    defaults = {};
  }

  function schedule(event) {
    if (event && event.target && event.target.name) {
      touched[event.target.name] = true;
      // Switching the term proposes that term's price as the limit, until the buyer sets one.
      var limit = form.querySelector('input[name="price_limit"]');
      if (event.target.name === "term" && limit && !touched.price_limit && defaults[term()]) {
        limit.value = defaults[term()];
      }
    }
    syncWindow();
    window.clearTimeout(timer);
    timer = window.setTimeout(check, 300);
  }

  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  syncWindow();
})();
