/* The dashboard's charts, drawn as SVG from the numbers embedded in the page (json_script).
 * No library and nothing fetched: every number is also in a table next to the chart, and each
 * bar carries a <title> with its numbers. */
(function () {
    "use strict";

    var SVG_NS = "http://www.w3.org/2000/svg";

    function svgEl(name, attrs, parent) {
        var node = document.createElementNS(SVG_NS, name);
        Object.keys(attrs || {}).forEach(function (key) {
            node.setAttribute(key, attrs[key]);
        });
        if (parent) {
            parent.appendChild(node);
        }
        return node;
    }

    function titled(node, text) {
        svgEl("title", {}, node).textContent = text;
        return node;
    }

    /* 1, 2, 5, 10, 20, 50 ... at or above n: round numbers for the y axis. */
    function niceCeil(n) {
        if (n <= 5) {
            return 5;
        }
        var power = Math.pow(10, Math.floor(Math.log10(n)));
        var steps = [1, 2, 5, 10];
        for (var i = 0; i < steps.length; i++) {
            if (steps[i] * power >= n) {
                return steps[i] * power;
            }
        }
        return 10 * power;
    }

    /* The daily series of one channel, or of all channels added up (index -1). */
    function seriesFor(data, channelIndex) {
        var series = {};
        data.statuses.forEach(function (status) {
            series[status.key] = data.days.map(function (_day, d) {
                if (channelIndex >= 0) {
                    return data.channels[channelIndex].daily[status.key][d];
                }
                return data.channels.reduce(function (sum, channel) {
                    return sum + channel.daily[status.key][d];
                }, 0);
            });
        });
        return series;
    }

    function drawDaily(holder, data, channelIndex) {
        // Drawn at the holder's own width, so that the text keeps its size on any screen.
        var width = Math.max(320, Math.round(holder.clientWidth) || 640);
        var height = 240, left = 46, right = 8, top = 10, bottom = 26;
        var plotW = width - left - right, plotH = height - top - bottom;
        var series = seriesFor(data, channelIndex);
        var totals = data.days.map(function (_day, d) {
            return data.statuses.reduce(function (sum, s) { return sum + series[s.key][d]; }, 0);
        });
        var max = niceCeil(Math.max.apply(null, totals.concat([0])));
        var channelName = channelIndex >= 0 ? data.channels[channelIndex].name : data.text.all;

        var svg = svgEl("svg", {
            viewBox: "0 0 " + width + " " + height,
            role: "img",
            "aria-labelledby": "ums-daily-title",
            preserveAspectRatio: "xMidYMid meet"
        });
        svgEl("title", {id: "ums-daily-title"}, svg).textContent =
            data.text.title + " (" + channelName + ")";

        var grid = svgEl("g", {"class": "ums-grid ums-axis"}, svg);
        for (var t = 0; t <= 4; t++) {
            var value = max * t / 4;
            var y = top + plotH - plotH * t / 4;
            svgEl("line", {x1: left, x2: width - right, y1: y, y2: y}, grid);
            var label = svgEl("text", {x: left - 6, y: y + 4, "text-anchor": "end"}, grid);
            label.textContent = String(Math.round(value));
        }

        var slot = plotW / data.days.length;
        var barW = Math.max(2, slot * 0.7);
        data.days.forEach(function (_day, d) {
            var x = left + slot * d + (slot - barW) / 2;
            var dayLabel = data.dayLabels[d];
            var summary = data.statuses.map(function (s) {
                return s.label + " " + series[s.key][d];
            }).join(", ");
            titled(svgEl("rect", {
                "class": "ums-day-hit", x: left + slot * d, y: top, width: slot, height: plotH
            }, svg), dayLabel + ": " + totals[d] + " " + data.text.recipients + " (" + summary + ")");
            var base = top + plotH;
            data.statuses.forEach(function (s) {
                var n = series[s.key][d];
                if (!n) {
                    return;
                }
                var h = plotH * n / max;
                base -= h;
                titled(svgEl("rect", {
                    "class": "ums-s-" + s.key, x: x, y: base, width: barW, height: Math.max(h, 0.5)
                }, svg), dayLabel + " · " + s.label + ": " + n);
            });
            var every = slot >= 44 ? 1 : slot >= 22 ? 2 : 5;
            if ((data.days.length - 1 - d) % every === 0) {
                var tick = svgEl("text", {
                    "class": "ums-axis", x: left + slot * d + slot / 2, y: height - 8,
                    "text-anchor": "middle"
                }, svg);
                tick.textContent = data.axisLabels[d];
            }
        });
        if (!totals.some(Boolean)) {
            svgEl("text", {
                "class": "ums-empty", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle"
            }, svg).textContent = data.text.empty;
        }
        var old = holder.querySelector("svg");
        if (old) {
            holder.replaceChild(svg, old);
        } else {
            holder.appendChild(svg);
        }
    }

    function setUpDaily(holder) {
        var source = document.getElementById(holder.getAttribute("data-ums-source"));
        if (!source) {
            return;
        }
        var data = JSON.parse(source.textContent);
        if (data.channels.length > 1) {
            var controls = document.createElement("div");
            controls.className = "ums-chart-controls";
            var label = document.createElement("label");
            label.htmlFor = "ums-daily-channel";
            label.textContent = data.text.channel;
            var select = document.createElement("select");
            select.id = "ums-daily-channel";
            [data.text.all].concat(data.channels.map(function (c) { return c.name; }))
                .forEach(function (name, i) {
                    var option = document.createElement("option");
                    option.value = String(i - 1);
                    option.textContent = name;
                    select.appendChild(option);
                });
            select.addEventListener("change", function () {
                drawDaily(holder, data, parseInt(select.value, 10));
            });
            controls.appendChild(label);
            controls.appendChild(select);
            holder.appendChild(controls);
        }
        var current = function () {
            var select = holder.querySelector("select");
            return select ? parseInt(select.value, 10) : data.channels.length === 1 ? 0 : -1;
        };
        var pending = null;
        window.addEventListener("resize", function () {
            window.clearTimeout(pending);
            pending = window.setTimeout(function () { drawDaily(holder, data, current()); }, 150);
        });
        drawDaily(holder, data, current());
    }

    /* A horizontal bar per table row: its shares by status, the numbers in the row itself. */
    function drawBar(cell, statuses) {
        var counts = cell.getAttribute("data-ums-bar").split(",").map(Number);
        var total = counts.reduce(function (a, b) { return a + b; }, 0);
        if (!total) {
            return;
        }
        var svg = svgEl("svg", {
            "class": "ums-bar", viewBox: "0 0 100 10", preserveAspectRatio: "none",
            "aria-hidden": "true", focusable: "false"
        });
        var x = 0;
        statuses.forEach(function (s, i) {
            if (!counts[i]) {
                return;
            }
            var w = 100 * counts[i] / total;
            titled(svgEl("rect", {"class": "ums-s-" + s.key, x: x, y: 0, width: w, height: 10}, svg),
                s.label + ": " + counts[i]);
            x += w;
        });
        cell.appendChild(svg);
    }

    function start() {
        var source = document.getElementById("ums-sends-data");
        if (!source) {
            return;
        }
        var statuses = JSON.parse(source.textContent).statuses;
        document.querySelectorAll("[data-ums-bar]").forEach(function (cell) {
            drawBar(cell, statuses);
        });
        document.querySelectorAll("[data-ums-chart='daily']").forEach(setUpDaily);
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
}());
